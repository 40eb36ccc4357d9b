"""Geo: GEOADD/GEODIST/GEOPOS/GEOSEARCH (sorted, so deterministic)."""

from compare import e


def test_geo(pair):
    pair.run(
        ("GEOADD", "geo", "13.361389", "38.115556", "Palermo", "15.087269", "37.502669", "Catania"),
        ("GEOADD", "geo", "NX", "CH", "12.496366", "41.902782", "Rome", "13.361389", "38.115556", "Palermo"),
        ("GEOADD", "geo", "XX", "CH", "12.5", "41.9", "Rome"),
        ("GEODIST", "geo", "Palermo", "Catania"),
        ("GEODIST", "geo", "Palermo", "Catania", "km"),
        ("GEODIST", "geo", "Palermo", "nowhere"),
        ("GEOPOS", "geo", "Palermo", "nowhere", "Rome"),
        ("GEOHASH", "geo", "Palermo", "Catania"),
        ("GEOSEARCH", "geo", "FROMLONLAT", "15", "37", "BYRADIUS", "200", "km", "ASC"),
        ("GEOSEARCH", "geo", "FROMMEMBER", "Palermo", "BYBOX", "1000", "1000", "km", "DESC",
         "WITHDIST", "WITHCOORD", "WITHHASH"),
        ("GEOSEARCH", "geo", "FROMLONLAT", "15", "37", "BYRADIUS", "2000", "km", "ASC", "COUNT", "1"),
        ("GEOSEARCHSTORE", "{g}dst", "{g}src", "FROMLONLAT", "15", "37", "BYRADIUS", "10", "km"),
        ("GEORADIUS_RO", "geo", "15", "37", "200", "km", "WITHDIST", "ASC"),
        e("GEOADD", "geo", "200", "100", "bad"),
        e("GEOSEARCH", "geo", "FROMMEMBER", "nowhere", "BYRADIUS", "1", "km"),
    )


def test_geosearchstore_same_tag(pair):
    pair.run(
        ("GEOADD", "{g}src", "13.361389", "38.115556", "Palermo", "15.087269", "37.502669", "Catania"),
        ("GEOSEARCHSTORE", "{g}dst", "{g}src", "FROMLONLAT", "15", "37", "BYRADIUS", "200", "km", "ASC"),
        ("ZRANGE", "{g}dst", "0", "-1", "WITHSCORES"),
        ("GEOSEARCHSTORE", "{g}dist", "{g}src", "FROMLONLAT", "15", "37", "BYRADIUS", "200", "km",
         "ASC", "STOREDIST"),
        ("ZRANGE", "{g}dist", "0", "-1", "WITHSCORES"),
    )
