"""robusthp's Hydra configs. Importing this package (Hydra does, to read config.yaml)
registers the defaults of every key and the catalog's dataset/model/regime choices."""

from robusthp.config_store import register, register_resolvers

register()
register_resolvers()
