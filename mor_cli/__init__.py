"""Command-line interface (``mor``). Shared by every party, so it lives outside them."""
