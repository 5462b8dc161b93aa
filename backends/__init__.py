"""Bindings of the eigpool core to array frameworks: ``numpy``, ``cupy`` and ``torch`` (imported on demand)."""
