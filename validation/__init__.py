"""Gradient verification: finite-difference checks of VJPs and hypothesis strategies for SPD matrices."""

from .gradcheck import VJPCheck, check_vjp, random_direction

__all__ = ["VJPCheck", "check_vjp", "random_direction"]
