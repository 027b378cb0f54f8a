"""The audit log of mutating calls (FR-PLT-005)."""
