//! Standard Webhooks signing.
