"""Data tooling shared by the training stream, the epoch (evaluation) stream and ``ganforge data``.

``shards``: URL expansion, reading one shard, decoding one sample (one implementation, so training, evaluation,
``inspect`` and ``pack`` agree on what counts as a readable image). ``epoch``: the exactly-once stream.
``pack`` / ``inspect_shards``: the ``ganforge data pack`` / ``ganforge data inspect`` commands.
"""
