"""`load_data(settings)` decodes the source once (or reads its cached decode), then draws the
seeded splits on every call (cheap): `val_size` images held out of the training source, equal per
class where possible; `train_size` an equally stratified subsample of the rest; the source's own
test split when it has one. The validation split does not depend on `train_size`, so a model
trained on a subsample is validated on the same images.
"""

from __future__ import annotations

from collections.abc import Callable

from distill.data.dataset import Dataset, Decoded
from distill.errors import UserError
from distill.settings import DataSettings


def load_data(settings: DataSettings) -> Dataset:
    """Decode (or read from the cache) the source, then draw the seeded splits.

    Raises UserError, with one line saying what to do, on anything the user can fix.
    """
    from distill import distributed
    from distill.data.cache import cached_decode
    from distill.data.sources import resolve_source
    from distill.data.splits import channel_stats, split_indices
    from distill.timing import phase

    if not settings.source:
        raise UserError("no data given; pass --data (cifar10, cifar100 or a folder)")
    # Every step under `agree`: a folder one rank cannot see is every rank's one-line error.
    with phase("data: scan the source"):
        source = distributed.agree(lambda: resolve_source(settings))
    decoded = decode_once(lambda: cached_decode(source, settings))
    with phase("data: split"):
        train_idx, val_idx = distributed.agree(
            lambda: split_indices(
                decoded.train.labels,
                len(decoded.classes),
                val_size=settings.val_size,
                train_size=settings.train_size,
                seed=settings.split_seed,
                class_names=decoded.classes,
            )
        )
        train, val = decoded.train.take(train_idx), decoded.train.take(val_idx)
        mean, std = channel_stats(train.images)
    info = {
        "source": source.name,
        "source_id": decoded.content_id,
        "format": source.kind,
        "split_seed": settings.split_seed,
        "train_size": len(train),
        "val_size": len(val),
        "test_size": len(decoded.test) if decoded.test is not None else 0,
        "num_classes": len(decoded.classes),
        "image_size": settings.image_size,
    }
    return Dataset(train, val, decoded.test, decoded.classes, mean, std, info)


def decode_once(decode: Callable[[], Decoded]) -> Decoded:
    """`decode()` (download, decode, write or read the cache) under torchrun without every rank
    downloading into the same folder at once: rank 0 goes first while the others wait, then the
    first rank of every other node (a hit when the cache folder is shared with rank 0's, else its
    node's one decode), then every other rank, which reads the cache its node wrote. Each turn is
    an `agree`: a failure on the rank whose turn it is ends every rank with its line."""
    from distill import distributed

    if not distributed.active():
        return decode()
    box: dict[str, Decoded] = {}
    me, first_of_node = distributed.rank(), distributed.local_rank() == 0
    for mine in (me == 0, me != 0 and first_of_node, not first_of_node):

        def turn(mine: bool = mine) -> None:
            if mine:
                box["decoded"] = decode()

        distributed.agree(turn)
    return box["decoded"]
