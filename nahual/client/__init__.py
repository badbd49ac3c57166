"""Client side of nahual: :class:`Client`, :class:`ModelHandle`, and seed-style model modules.

``nahual.client.<model>`` modules (``nahual.client.echo``) keep the call style
of earlier nahual releases: ``load_model(parameters, address=...)`` then
``process_data(data, address=...)``.
"""

from ._client import Client, ModelHandle

__all__ = ["Client", "ModelHandle"]
