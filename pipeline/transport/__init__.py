"""What crosses process boundaries: typed messages, their wire format, and the queues."""
