"""Optional recording backends for :func:`ps_interp.record` (``backend="lens"``: TransformerLens).

A backend is a function ``fn(model, batch, layers, weights, onehot, per_token) -> [ [4, G, F] ]``
(one reduced tensor per layer, see :func:`ps_interp.record.reduce_site`).

Example:
    >>> from ps_interp.models import tiny
    >>> from ps_interp.backends.lens import lens_batch_fn
    >>> batch_fn = lens_batch_fn(tiny.build("llama"))   # doctest: +SKIP
"""
