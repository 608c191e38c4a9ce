"""Skill sharing between installations: manifests, the mesh peer, the tracker (docs/skills.md)."""
