"""Training, export and evaluation toolkit for instseg models."""
