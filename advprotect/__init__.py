"""advprotect: benign adversarial protection of images against machine analysis."""

__version__ = "0.1.0"
