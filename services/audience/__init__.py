"""The audience domain (issue 15, in progress): where data about people
enters the platform. So far: reading Segment-compatible tracking calls."""
