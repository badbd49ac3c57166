"""Seed-style calls to the ``echo`` model.

``load_model(parameters, address=...)``, then ``process_data(data, address=...)``.
"""

from ._seed import seed_api

__all__ = ["load_model", "process_data"]

load_model, process_data = seed_api("echo")
