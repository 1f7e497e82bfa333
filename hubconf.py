"""torch.hub entry points: ``torch.hub.load(repo_dir, "res_se_net20", source="local", pretrained=True)``.

Every registered model name is an entry point. Works from a checkout without installing the package;
``pretrained=True`` (or a tag) loads the published weights from the checkout's ``weights/`` folder, as
``ressenet.create_model`` does.
"""
import sys
from pathlib import Path

dependencies = ["torch"]

_src = str(Path(__file__).resolve().parent / "src")
if _src not in sys.path:
    sys.path.insert(0, _src)

from ressenet.models import create_model as _create_model  # noqa: E402
from ressenet.models import list_models as _list_models  # noqa: E402


def _entry(name: str):
    def factory(**kwargs):
        return _create_model(name, **kwargs)

    factory.__name__ = name
    factory.__doc__ = (f"{name} (ressenet); options: num_classes, shortcut, se_reduction, layout; pretrained=True (the "
                       f"published weights), a tag, or PATH_OR_URL of a file `ressenet export` wrote.")
    return factory


globals().update({_name: _entry(_name) for _name in _list_models()})
