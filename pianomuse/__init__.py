"""pianomuse: piano completion with RWKV-7."""
