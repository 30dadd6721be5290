"""Local simulators of GitHub and Stacksona, real HTTP servers on loopback."""
