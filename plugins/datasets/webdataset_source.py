"""Any webdataset image shards: local paths, brace patterns, http(s):// or pipe: URLs."""

from __future__ import annotations

from ganforge.api import DatasetSource
from ganforge.registry import register
from ganforge.stream import expand_urls


@register("dataset", "webdataset")
class WebDataset(DatasetSource):
    """Webdataset tar shards of images (png/jpg/jpeg/webp); braces expand, ``::`` joins several patterns."""

    def __init__(self, urls: str | list[str] = ""):
        ok = isinstance(urls, str) or (isinstance(urls, list) and all(isinstance(u, str) for u in urls))
        if not ok or not urls:
            raise ValueError(
                "urls must be a shard URL pattern or a list of them "
                f"(e.g. 'shards/train-{{000000..000127}}.tar'), got {urls!r}"
            )
        self.spec = urls

    def urls(self) -> list[str]:
        # Checked here, not in __init__: local shards may only appear after prepare() on each machine.
        return expand_urls(self.spec, where="data.urls")
