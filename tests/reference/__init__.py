"""Reference implementations that tests compare mixa against (not part of the package)."""
