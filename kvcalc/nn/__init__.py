"""Real attention layers with KV caches (torch). Imported only by ``kvcalc measure`` and tests."""
