"""The one YAML reader of config, grid and run-directory files: safe (no code runs), no key given twice, no alias
expansion beyond a bound. Errors are one-line ConfigErrors naming the file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ressenet.errors import ConfigError, quote

__all__ = ["load_yaml", "read_config_file", "MAX_YAML_NODES"]

# A config or grid file has tens of entries; more nodes than this, counting each alias as what it expands to, is
# an alias bomb (six levels of nine aliases in 1 KB expand to millions).
MAX_YAML_NODES = 10_000


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"key {quote(key)} appears twice (line {line})")


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice (YAML would keep the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
            except TypeError:  # an unhashable key: the base class says so
                pass
        return super().construct_mapping(node, deep)


def _expanded_nodes(node: yaml.Node, limit: int) -> int:
    """Nodes in the tree with aliases expanded, counted up to ``limit`` (so the count itself stays cheap)."""
    n, stack = 0, [node]
    while stack and n <= limit:
        nd = stack.pop()
        n += 1
        if isinstance(nd, yaml.SequenceNode):
            stack.extend(nd.value)
        elif isinstance(nd, yaml.MappingNode):
            stack.extend(x for pair in nd.value for x in pair)
    return n


def load_yaml(text: str, where: str) -> Any:
    """The one YAML reader of config, grid and run-directory files: safe (no code runs), no duplicate keys, no
    alias expansion beyond ``MAX_YAML_NODES``. Raises ConfigError naming ``where``."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_nodes(node, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise ConfigError(f"{where} expands to more than {MAX_YAML_NODES:,} values through its aliases (&/*); "
                              f"write the values out instead of nesting aliases")
        return loader.construct_document(node)
    except _DuplicateKey as e:
        raise ConfigError(f"{where}: {e}; keep one of them") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {str(e).splitlines()[0]}") from None
    finally:
        loader.dispose()


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The nested mapping in a ``--config`` YAML file, with one-line errors for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found; pass an existing YAML file to --config")
    try:
        tree = load_yaml(p.read_text(encoding="utf-8"), f"config file {p}") or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                          f"save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read: {e.strerror or e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {p} must hold a mapping with sections model/data/optim/run")
    return tree
