"""Models of the suite, reachable through the registry: `models.create(name, **options)`;
`models.register(name, ConfigClass)` adds one (the suite's own, or a user's from a spec's `imports`);
`models.routing_names()` lists the routing procedures CapsNet's `routing` option takes."""
from models import capsnet, cnn, efficient_capsnet, multimnist  # noqa: F401  (registers the models)
from models.fields import ConfigError
from models.output import LossTerms, ModelOutput
from models.registry import config_class, create, make_config, names, option_names, register
from models.routing_procedures import names as routing_names

__all__ = ["create", "names", "config_class", "make_config", "option_names", "register", "ModelOutput", "LossTerms",
           "ConfigError", "routing_names"]
