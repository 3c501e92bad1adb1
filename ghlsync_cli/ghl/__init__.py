"""The GHL API v2 client and its wire models."""
