"""Configs cite publications (authors, venue, table or code file), never files outside the
repository that a user does not have."""

import yaml

from moepim.sim.config import REPO_ROOT

OUTSIDE = ("shared/", "anchors.md", "paper_moe_pim", "related_seeds", "DESIGN.md", "../")


def _sources(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "source" and isinstance(v, str):
                yield path, v
            else:
                yield from _sources(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _sources(v, f"{path}[{i}]")


def test_configs_cite_publications_not_files_outside_the_repository():
    bad = []
    for f in sorted((REPO_ROOT / "configs").rglob("*.yaml")):
        text = f.read_text()
        for key, src in _sources(yaml.safe_load(text)):
            if any(s in src for s in OUTSIDE):
                bad.append(f"{f.relative_to(REPO_ROOT)}: {key}: {src}")
        for needle in ("shared/reference", "anchors.md", "paper_moe_pim.md",
                       "related_seeds.md"):
            if needle in text:
                bad.append(f"{f.relative_to(REPO_ROOT)}: mentions {needle}")
    text = (REPO_ROOT / "pyproject.toml").read_text()
    if "DESIGN.md" in text and not (REPO_ROOT / "DESIGN.md").exists():
        bad.append("pyproject.toml: mentions DESIGN.md, which is not in the repository")
    assert not bad, "\n".join(bad)
