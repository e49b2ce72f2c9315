"""Draft distillation: build a small draft from a target and train it to match the target.

``data`` (sources, held-out rule) -> ``teacher`` (the target writes and scores the data) ->
``dataset`` (shards on disk) -> ``student`` (the draft's design) -> ``train`` (the loop);
``shipped`` loads the draft shipped with the package for the embedded target.
"""
