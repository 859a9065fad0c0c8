"""Seed 000's import path: ``from early_exit.get_early_exit import create_networks`` becomes
``from kd_toolkit.early_exit.get_early_exit import create_networks`` (the only line a user changes).

A top-level ``early_exit`` package is not provided: a user migrating still has the original ``early_exit``
folder in the project, which it would shadow or be shadowed by.

Example:
    >>> from kd_toolkit.early_exit.get_early_exit import create_networks
"""

from kd_toolkit.early_exit.seed_api import create_networks

__all__ = ["create_networks"]
