"""The ``vtab1k`` source: one VTAB-1k task folder with ``<split>.txt`` lists of ``<image> <label>``.

Image paths are relative to the folder; labels are 0-based class numbers, and the classes are
counted over every list file present, so all splits share one label space.
"""

from __future__ import annotations

from pace_cli.data.datasets import FileDataset, PaceDataset
from pace_cli.data.lists import read_label_list
from pace_cli.data.sources import SourceRequest, get_source
from pace_cli.errors import PaceError


def build(request: SourceRequest) -> PaceDataset:
    root, split = request.root, request.split
    list_file = root / f"{split}.txt"
    if not list_file.is_file():
        raise PaceError(f"vtab1k list file {list_file} not found; check [data] root points at "
                        "one VTAB-1k data set folder (holding train800.txt, test.txt, ...)")
    entries = read_label_list(list_file)
    max_label = max((lab for _, lab, _ in entries), default=-1)
    for other in get_source(request.source).splits:
        other_file = root / f"{other}.txt"
        if other != split and other_file.is_file():
            max_label = max([max_label] + [lab for _, lab, _ in read_label_list(other_file)])
    paths = [root / rel for rel, _, _ in entries]
    missing = [(p, ln) for p, (_, _, ln) in zip(paths, entries) if not p.is_file()]
    if missing:
        path, lineno = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise PaceError(f"image {path} listed on line {lineno} of {list_file} not found{more}; "
                        "paths are relative to [data] root")
    classes = [str(i) for i in range(max_label + 1)]
    return FileDataset(paths, root, classes=classes, labels=[lab for _, lab, _ in entries], **request.common())
