"""The papers' mathematics as pure tensor functions (no transformers import)."""
