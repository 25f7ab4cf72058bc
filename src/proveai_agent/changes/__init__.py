"""What changed before a failure: deploy markers, watched files and attribute drift."""
