"""Inference: prediction with exported weights (`predict`), tiles of large images, map coordinates."""
