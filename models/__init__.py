"""Models of the suite, reachable through the registry: `models.create(name, **options)`."""
from models import capsnet, cnn  # noqa: F401  (registers the models)
from models.output import LossTerms, ModelOutput
from models.registry import config_class, create, make_config, names, option_names

__all__ = ["create", "names", "config_class", "make_config", "option_names", "ModelOutput", "LossTerms"]
