"""One module per endpoint group of the ``/v1`` API (see ``wire.messages`` for the list)."""
