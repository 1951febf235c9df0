"""Namespace checkpoints: the user's variables saved after every cell, restorable at any time.

Here "checkpoint" means a namespace checkpoint only. Modules, each one concept:

* :mod:`~kernel.checkpoint.manifest` -- what a checkpoint is on the record (Manifest, Entry, reports);
* :mod:`~kernel.checkpoint.names` -- which names are the user's (and not Python's or IPython's);
* :mod:`~kernel.checkpoint.scan` -- which names a cell could have changed;
* :mod:`~kernel.checkpoint.pickling` -- cloudpickle tuned for a notebook namespace;
* :mod:`~kernel.checkpoint.groups` -- aliases: names sharing objects are pickled together;
* :mod:`~kernel.checkpoint.libraries` -- numpy and pandas objects no two names can observe sharing;
* :mod:`~kernel.checkpoint.checkpointer` -- capture and restore, incrementally;
* :mod:`~kernel.checkpoint.history` -- each capture as a signed durable promise, and time travel;
* :mod:`~kernel.checkpoint.signing` -- the HMAC key and signatures.

A checkpoint is a small :class:`~kernel.checkpoint.manifest.Manifest` (name
-> content hash, type, size, how to restore) that the kernel stores in a
durable promise. The values live in the content-addressed
:class:`~kernel.store.base.BlobStore`, written once per distinct
content, so any older manifest can be restored the same way (time travel) and
unchanged values cost nothing to keep.

How values are saved
    * Modules are recorded as imports (``np`` -> ``numpy``) and re-imported.
    * Everything else goes through cloudpickle (protocol 5), so functions,
      lambdas and classes defined in the notebook (module ``__main__``) come
      back by value. Functions whose globals are the notebook namespace are
      pickled *without* those globals and rebound to the namespace they are
      restored into: a restored ``def bump(): global n; n += 1`` still updates
      the notebook's ``n``, and a function never drags a copy of a big array
      into its own blob.
    * Contiguous buffers (numpy arrays, ...) of 64 KiB or more go out-of-band:
      each is hashed and written straight from its memoryview as its own blob,
      never copied into the pickle stream or through JSON. Restored arrays are
      private copy-on-write mappings of the blob files, hence writable.
    * Names whose objects are shared (two names bound to one list, a dict
      holding an object also bound to a name) are pickled together in one blob
      so they stay shared after restore.
    * A notebook class travels by value inside every blob holding one of its
      instances; cloudpickle merges the copies on restore, and blobs are loaded
      oldest first so the newest class state wins.
    * Values that cannot be pickled (open files, sockets, generators, locks,
      connections, or anything holding one) are skipped and reported by name,
      as are excluded names and values over the size limit. Nothing else is
      lost because of them.
"""
