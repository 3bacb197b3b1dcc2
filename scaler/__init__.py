"""The scaler: observe queue and libvirt, decide with a pure policy, act on domains."""
