"""The `iso20022` bank dialect (shared/spec/iso20022.md)."""
