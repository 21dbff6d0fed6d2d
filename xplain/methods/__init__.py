"""Attribution methods, each written once against :class:`xplain.backend.Backend`.

One module per family; :mod:`xplain.methods.plugin` registers the built-ins through the same
pluggy hooks third-party packs use.
"""
