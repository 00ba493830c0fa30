"""Writes data/houses.csv: 300 synthetic house sales, messy as real tables are (run it to regenerate the file).

An ID column, a quoted address with commas (text: ignored unless listed), a neighbourhood (text: one-hot
encoded when listed in --data.categorical), a few empty cells, and the price in thousands as the target:
price_k = 40 + 1.9 area + 9 rooms - 0.5 age - 4 distance + a neighbourhood effect + noise (sd 15).
"""

import csv
from pathlib import Path

import numpy as np

rng = np.random.default_rng(2026)
n = 300
streets = ["Oak St", "Elm Rd", "Mill Lane", "High St", "Park Ave"]
towns = ["Springfield", "Riverton", "Lakeside"]
hoods = {"Central": 30.0, "North": 0.0, "Riverside, east bank": 45.0, "South": -10.0}
area = rng.uniform(40, 220, n).round(1)
rooms = np.clip((area / 35 + rng.normal(0, 0.8, n)).round(), 1, 9).astype(int)
age = rng.integers(0, 90, n)
distance = rng.uniform(0.5, 25, n).round(2)
hood = rng.choice(list(hoods), n, p=[0.25, 0.3, 0.15, 0.3])
price = 40 + 1.9 * area + 9 * rooms - 0.5 * age - 4 * distance + np.array([hoods[h] for h in hood])
price = (price + rng.normal(0, 15, n)).round(1)

rows = []
for i in range(n):
    address = f"{rng.integers(1, 200)} {rng.choice(streets)}, {rng.choice(towns)}"
    rows.append([f"H{i + 1:04d}", address, hood[i], area[i], rooms[i], age[i], distance[i], price[i]])
for i, column in [(7, 5), (31, 3), (64, 7), (120, 6), (188, 2), (250, 4)]:  # a few empty cells, the price too
    rows[i][column] = ""
with open(Path(__file__).with_name("houses.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["id", "address", "neighbourhood", "area_m2", "rooms", "age_years", "distance_km", "price_k"])
    writer.writerows(rows)
