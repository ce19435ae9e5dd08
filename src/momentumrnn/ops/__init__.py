"""The operations under the computation paths, one folder each, its reference beside its
backends: ``linear_scan`` (the rules' linear states over time) and ``adam_drive`` (Adam's and
RMSProp's drive). Each backend is tested against its folder's ``naive.py``."""
