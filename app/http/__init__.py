"""Accept: the HTTP routes, webhook signatures and payload parsing. No outbound call happens here."""
