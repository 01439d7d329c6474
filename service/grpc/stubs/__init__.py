"""Code generated from `../proto` by `gen_stubs.py`, in its own descriptor pool.

tritonclient registers the same `inference` messages in protobuf's global pool; this pool keeps the
server's copy apart, so both import in one process.
"""

from google.protobuf.descriptor_pool import DescriptorPool

POOL = DescriptorPool()
