"""Local HTTP sandboxes that emulate third-party services (Kosli, ...) for tests and demos.

The product talks to them only over HTTP, exactly as it would to the real service; everything that is
sandbox-only (seeding, fault injection, inspection) lives under ``/_sandbox/`` or in-process methods.
"""
