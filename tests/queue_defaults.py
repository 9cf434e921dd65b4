"""The queue settings of the config schema's defaults, for tests.

Queues take ``maxlen`` and ``max_deliveries`` as required keyword arguments (the schema holds every default
once); tests that do not care pass ``**QUEUE``, and override one with ``**{**QUEUE, "maxlen": 5}``.
"""

from pipeline.config import QueueConfig

QUEUE = {"maxlen": QueueConfig().maxlen, "max_deliveries": QueueConfig().max_deliveries}
