//! Same-host coordination: exactly one primary instance per application and user.
