"""A knowledge-bound dataset: items are named only by a well-known entity ("Paris", "Mozart").

The text never states the category (no "the city Paris"), and items of one category share no
words, so a model can only transfer a user's taste from warm items to cold ones if it knows from
pre-training what kind of thing each name is. Users like latent categories; clicks depend on the
category (plus a small per-item effect), drawn from a known logistic model stored in `meta`.

Its cold test split holds only 30 entities, and "is this a person" alone explains much of the
signal; docs/training.md, "Surface check", measures both and proposes `movielens100k:<dir>?text=title`
as the knowledge test instead.
"""

from __future__ import annotations

import numpy as np

from marc.data.dataset import RecDataset
from marc.data.simulate import (
    CLICK_MODEL,
    build_simulated_dataset,
    calibrate_intercept,
    sample_exposures,
    sigmoid,
)

ENTITIES: dict[str, list[str]] = {
    "city": [
        "Paris", "London", "Tokyo", "New York", "Rome", "Berlin", "Madrid", "Moscow", "Beijing",
        "Sydney", "Cairo", "Istanbul", "Bangkok", "Toronto", "Los Angeles", "Amsterdam", "Vienna",
        "Prague", "Barcelona", "Dubai", "Mumbai", "Shanghai", "Seoul", "Rio de Janeiro",
        "Buenos Aires", "Florence", "Athens", "Lisbon", "Venice", "San Francisco",
    ],
    "musician": [
        "Mozart", "Beethoven", "Johann Sebastian Bach", "Chopin", "Vivaldi", "Tchaikovsky",
        "Elvis Presley", "The Beatles", "Michael Jackson", "Madonna", "Bob Dylan", "Frank Sinatra",
        "David Bowie", "Taylor Swift", "Beyoncé", "Eminem", "Bob Marley", "Jimi Hendrix",
        "Johnny Cash", "The Rolling Stones", "Pink Floyd", "Led Zeppelin", "ABBA", "Adele",
        "Elton John", "Louis Armstrong", "Miles Davis", "Aretha Franklin", "Whitney Houston",
        "Stevie Wonder",
    ],
    "painter": [
        "Leonardo da Vinci", "Michelangelo", "Rembrandt", "Vincent van Gogh", "Pablo Picasso",
        "Claude Monet", "Salvador Dalí", "Frida Kahlo", "Andy Warhol", "Henri Matisse", "Paul Cézanne",
        "Edgar Degas", "Raphael", "Caravaggio", "Johannes Vermeer", "Gustav Klimt", "Edvard Munch",
        "Jackson Pollock", "René Magritte", "Paul Gauguin", "Pierre-Auguste Renoir", "Francisco Goya",
        "Diego Velázquez", "Sandro Botticelli", "Titian", "J. M. W. Turner", "Wassily Kandinsky",
        "Marc Chagall", "Georgia O'Keeffe", "Edward Hopper",
    ],
    "film": [
        "The Godfather", "Casablanca", "Star Wars", "Titanic", "Jurassic Park", "The Matrix",
        "Pulp Fiction", "Forrest Gump", "Schindler's List", "Gone with the Wind", "The Wizard of Oz",
        "Citizen Kane", "Psycho", "Jaws", "E.T. the Extra-Terrestrial", "The Lion King", "Toy Story",
        "Avatar", "Inception", "The Dark Knight", "Back to the Future", "Rocky", "Gladiator",
        "The Shawshank Redemption", "Fight Club", "Goodfellas", "Frozen", "Finding Nemo",
        "Home Alone", "The Silence of the Lambs",
    ],
    "car_make": [
        "Toyota", "Ford", "BMW", "Mercedes-Benz", "Ferrari", "Lamborghini", "Porsche", "Volkswagen",
        "Audi", "Honda", "Nissan", "Chevrolet", "Volvo", "Hyundai", "Kia", "Fiat", "Peugeot",
        "Renault", "Cadillac", "Jeep", "Subaru", "Mazda", "Bentley", "Rolls-Royce", "Maserati",
        "Bugatti", "Aston Martin", "Land Rover", "Lexus", "Alfa Romeo",
    ],
    "athlete": [
        "Michael Jordan", "Pelé", "Usain Bolt", "Serena Williams", "Roger Federer", "Lionel Messi",
        "Cristiano Ronaldo", "Muhammad Ali", "Tiger Woods", "LeBron James", "Diego Maradona",
        "Babe Ruth", "Wayne Gretzky", "Michael Phelps", "Rafael Nadal", "Novak Djokovic",
        "Kobe Bryant", "Zinedine Zidane", "Mike Tyson", "Lewis Hamilton", "Michael Schumacher",
        "Ayrton Senna", "Tom Brady", "Simone Biles", "Carl Lewis", "Jesse Owens", "David Beckham",
        "Neymar", "Shaquille O'Neal", "Martina Navratilova",
    ],
    "food": [
        "Pizza", "Sushi", "Hamburger", "Spaghetti", "Tacos", "Croissant", "Paella", "Lasagna",
        "Ramen", "Curry", "Kimchi", "Hummus", "Falafel", "Burrito", "Dumplings", "Pad Thai",
        "Guacamole", "Cheesecake", "Pancakes", "Risotto", "Tiramisu", "Baguette", "Bagel", "Fondue",
        "Goulash", "Borscht", "Lobster", "Omelette", "Brownie", "Pretzel",
    ],
    "animal": [
        "Lion", "Tiger", "Elephant", "Giraffe", "Zebra", "Penguin", "Kangaroo", "Dolphin", "Gorilla",
        "Cheetah", "Panda", "Koala", "Hippopotamus", "Rhinoceros", "Crocodile", "Eagle", "Owl", "Wolf",
        "Polar bear", "Camel", "Octopus", "Shark", "Flamingo", "Peacock", "Chimpanzee", "Leopard",
        "Hedgehog", "Squirrel", "Parrot", "Whale",
    ],
    "scientist": [
        "Albert Einstein", "Isaac Newton", "Charles Darwin", "Marie Curie", "Galileo Galilei",
        "Nikola Tesla", "Stephen Hawking", "Louis Pasteur", "Johannes Kepler", "Nicolaus Copernicus",
        "Niels Bohr", "Max Planck", "Richard Feynman", "Alan Turing", "Ada Lovelace", "Gregor Mendel",
        "Dmitri Mendeleev", "Michael Faraday", "James Clerk Maxwell", "Thomas Edison",
        "Alexander Fleming", "Enrico Fermi", "Rosalind Franklin", "Carl Sagan", "Archimedes",
        "Pythagoras", "Euclid", "Werner Heisenberg", "Erwin Schrödinger", "Robert Koch",
    ],
    "writer": [
        "William Shakespeare", "Jane Austen", "Charles Dickens", "Mark Twain", "Leo Tolstoy",
        "Fyodor Dostoevsky", "Ernest Hemingway", "Victor Hugo", "George Orwell", "J. K. Rowling",
        "Agatha Christie", "Homer", "Dante Alighieri", "Miguel de Cervantes", "Franz Kafka",
        "Virginia Woolf", "Oscar Wilde", "Edgar Allan Poe", "Stephen King", "J. R. R. Tolkien",
        "Emily Dickinson", "Johann Wolfgang von Goethe", "Gabriel García Márquez", "James Joyce",
        "Herman Melville", "F. Scott Fitzgerald", "Jules Verne", "Arthur Conan Doyle",
        "Lewis Carroll", "Hans Christian Andersen",
    ],
}  # fmt: skip
# The categories whose entities are people: their names share a form ("First Last") that the
# other categories rarely have, so "is this a person" is partly readable from the text alone.
PERSON_CATEGORIES = ("musician", "painter", "athlete", "scientist", "writer")
_TASTE_RANK = 3  # users' category tastes are mixtures of a few latent personas


def make_entities(
    num_users: int = 1000,
    interactions_per_user: int = 40,
    cold_fraction: float = 0.2,
    seed: int = 0,
    num_items: int | None = None,
    positive_rate: float = 0.3,
) -> RecDataset:
    """Generate the entity dataset (deterministic by seed). `num_items` keeps a random subset of the table.

    Click model: `marc.data.simulate.CLICK_MODEL` with item_features = one-hot category, and
    item_bias = a small per-entity effect (fame, which ids can learn for warm items).
    """
    if not 0.0 <= cold_fraction < 1.0:
        raise ValueError(f"cold_fraction must be in [0, 1), got {cold_fraction}")
    rng = np.random.default_rng(seed)
    categories = list(ENTITIES)
    table = [(name, c) for c, category in enumerate(categories) for name in ENTITIES[category]]
    # Shuffle so neither ids nor item order reveal the category.
    order = rng.permutation(len(table))
    if num_items is not None:
        if not 0 < num_items <= len(table):
            raise ValueError(f"num_items must be in [1, {len(table)}] for the entity table, got {num_items}")
        order = order[:num_items]
    names = [table[k][0] for k in order]
    item_category = np.array([table[k][1] for k in order], dtype=np.int64)
    n = len(names)

    item_features = np.zeros((n, len(categories)), dtype=np.float32)
    item_features[np.arange(n), item_category] = 1.0
    persona_weights = rng.normal(0.0, 2.0, size=(_TASTE_RANK, len(categories)))
    user_factors = rng.normal(0.0, 1.0, size=(num_users, _TASTE_RANK)) / np.sqrt(_TASTE_RANK)
    user_weights = user_factors @ persona_weights + rng.normal(0.0, 0.5, size=(num_users, len(categories)))
    user_bias = rng.normal(0.0, 0.5, size=num_users)
    item_bias = rng.normal(0.0, 0.3, size=n)
    popularity = rng.lognormal(0.0, 0.5, size=n)

    users, items = sample_exposures(rng, num_users, n, interactions_per_user, popularity)
    raw_logits = (
        user_bias[users] + np.einsum("nf,nf->n", user_weights[users], item_features[items]) + item_bias[items]
    )
    intercept = calibrate_intercept(raw_logits, positive_rate)
    meta = {
        "generator": "marc.data.entities.make_entities",
        "params": {
            "num_items": n,
            "num_users": num_users,
            "interactions_per_user": interactions_per_user,
            "cold_fraction": cold_fraction,
            "seed": seed,
            "positive_rate": positive_rate,
        },
        "click_model": CLICK_MODEL + " with item_features = one-hot entity category",
        "categories": categories,
        "feature_names": [f"category={c}" for c in categories],
        "item_category": item_category,
        "intercept": intercept,
        "item_features": item_features,
        "item_bias": item_bias,
        "user_weights": user_weights,
        "user_bias": user_bias,
    }
    ids = [f"ent-{i:04d}" for i in range(n)]
    probabilities = sigmoid(raw_logits + intercept)
    return build_simulated_dataset(
        "entities", rng, ids, names, num_users, users, items, probabilities, cold_fraction, meta
    )
