"""Signed edge releases with The Update Framework: keys, repository, publish and channels,
serving (docs/releases.md)."""
