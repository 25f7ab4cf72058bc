"""Cases: grouping signals, the case document and its context snapshot."""
