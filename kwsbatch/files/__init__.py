"""Files in: audio decoding, manifests and their dialects, label outputs, atomic writes and locks."""
