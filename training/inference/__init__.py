"""Inference: streaming, resumable prediction over a folder of photos, sharded over local devices."""
