"""The hand-written part of ``course_qa``'s question bank (``course_lib.eval.qa_task`` turns it into items).

Everything here was written for the course, not taken from a benchmark or website. Tables of
(subject, answer) pairs: one question template per table, and the distractors are other answers of
the same table (qa_task draws them with its seeded generator). ``EVERYDAY`` rows carry their own
three distractors. Kept to facts a small chat model may know, with one defensible answer each.
"""

COUNTRIES = [  # (country, capital, continent; None: no continent question)
    ("France", "Paris", "Europe"), ("Japan", "Tokyo", "Asia"), ("Italy", "Rome", "Europe"),
    ("Germany", "Berlin", "Europe"), ("Spain", "Madrid", "Europe"), ("Russia", "Moscow", None),
    ("China", "Beijing", "Asia"), ("Egypt", "Cairo", "Africa"), ("the United Kingdom", "London", None),
    ("Greece", "Athens", "Europe"), ("Portugal", "Lisbon", "Europe"), ("Canada", "Ottawa", "North America"),
    ("Australia", "Canberra", None), ("India", "New Delhi", "Asia"), ("Mexico", "Mexico City", "North America"),
    ("Argentina", "Buenos Aires", "South America"), ("Kenya", "Nairobi", "Africa"), ("Ireland", "Dublin", None),
    ("Norway", "Oslo", "Europe"), ("Sweden", "Stockholm", None), ("Poland", "Warsaw", None),
    ("Austria", "Vienna", None), ("Thailand", "Bangkok", "Asia"), ("South Korea", "Seoul", "Asia"),
    ("Turkey", "Ankara", None), ("Brazil", "Brasilia", "South America"), ("Peru", "Lima", "South America"),
    ("Cuba", "Havana", "North America"), ("Nigeria", "Abuja", "Africa"), ("Chile", "Santiago", "South America"),
    ("Morocco", "Rabat", "Africa"), ("Vietnam", "Hanoi", "Asia"),
]
CONTINENTS = ["Africa", "Asia", "Europe", "North America", "South America", "Antarctica"]

PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
PLANET_FACTS = [
    ("Which planet is closest to the Sun?", "Mercury"), ("Which planet is called the Red Planet?", "Mars"),
    ("Which is the largest planet in the solar system?", "Jupiter"), ("Which planet do people live on?", "Earth"),
    ("Which planet is famous for its bright rings?", "Saturn"), ("Which planet is farthest from the Sun?", "Neptune"),
    ("Which planet is the hottest in the solar system?", "Venus"),
]
ELEMENTS = [("oxygen", "O"), ("hydrogen", "H"), ("carbon", "C"), ("nitrogen", "N"), ("gold", "Au"),
            ("silver", "Ag"), ("iron", "Fe"), ("sodium", "Na"), ("helium", "He"), ("copper", "Cu"),
            ("calcium", "Ca"), ("potassium", "K"), ("lead", "Pb"), ("chlorine", "Cl"), ("zinc", "Zn")]
COLOUR_FACTS = [  # (question, colour)
    ("What colour is grass?", "green"), ("What colour is the sky on a clear day?", "blue"),
    ("What colour is fresh snow?", "white"), ("What colour is coal?", "black"),
    ("What colour is a ripe banana?", "yellow"), ("What colour is a ripe tomato?", "red"),
    ("What colour is chocolate?", "brown"), ("What colour is a flamingo?", "pink"),
    ("What colour do you get by mixing blue and yellow?", "green"),
    ("What colour do you get by mixing red and white?", "pink"),
    ("What colour do you get by mixing red and yellow?", "orange"),
    ("What colour do you get by mixing black and white?", "grey"),
    ("What colour do you get by mixing red and blue?", "purple"), ("What colour is a carrot?", "orange"),
]
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "grey"]
SOUNDS = [("dog", "bark"), ("cat", "meow"), ("cow", "moo"), ("sheep", "baa"), ("duck", "quack"),
          ("lion", "roar"), ("pig", "oink"), ("horse", "neigh"), ("snake", "hiss"), ("owl", "hoot"),
          ("bee", "buzz"), ("mouse", "squeak")]
LEGS = [("spider", 8), ("ant", 6), ("dog", 4), ("chicken", 2), ("snake", 0), ("horse", 4), ("beetle", 6),
        ("duck", 2), ("cat", 4), ("bee", 6), ("bird", 2), ("cow", 4)]
HOMES = [("camel", "in the desert"), ("shark", "in the ocean"), ("polar bear", "in the Arctic"),
         ("penguin", "in Antarctica"), ("monkey", "in the jungle"), ("honeybee", "in a hive"),
         ("cow", "on a farm"), ("whale", "in the ocean"), ("parrot", "in the jungle"), ("wild rabbit", "in a burrow")]
UNITS = [  # (question, number)
    ("How many days are in a week?", 7), ("How many months are in a year?", 12), ("How many hours are in a day?", 24),
    ("How many minutes are in an hour?", 60), ("How many seconds are in a minute?", 60),
    ("How many hours are in two days?", 48), ("How many centimetres are in a metre?", 100),
    ("How many grams are in a kilogram?", 1000), ("How many metres are in a kilometre?", 1000),
    ("How many eggs are in a dozen?", 12),
    ("How many years are in a century?", 100), ("How many years are in a decade?", 10),
    ("How many sides does a triangle have?", 3), ("How many sides does a square have?", 4),
    ("How many sides does a hexagon have?", 6), ("How many sides does an octagon have?", 8),
    ("How many days are in a leap year?", 366), ("How many days are in the month of June?", 30),
    ("How many wheels does a bicycle have?", 2),
]
OPPOSITES = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
             ("dark", "light"), ("open", "closed"), ("early", "late"), ("full", "empty"), ("wet", "dry"),
             ("loud", "quiet"), ("hard", "soft"), ("rich", "poor"), ("strong", "weak"), ("thick", "thin"),
             ("high", "low"), ("first", "last"), ("young", "old")]
EVERYDAY = [  # (question, answer, three distractors of the same kind)
    ("What do you use to cut paper?", "scissors", "a spoon|a pillow|a towel"),
    ("What do you use an umbrella for?", "to stay dry in the rain", "to cook food|to open doors|to tell the time"),
    ("Where do you keep milk cold at home?", "in the fridge", "in the oven|in the bathtub|in the mailbox"),
    ("What do you use to brush your teeth?", "a toothbrush", "a fork|a comb|a pencil"),
    ("What do bees make?", "honey", "milk|wool|cheese"), ("What do chickens lay?", "eggs", "milk|honey|wool"),
    ("Which meal do people eat in the morning?", "breakfast", "dinner|supper|lunch"),
    ("Where does a doctor usually work?", "in a hospital", "in a bakery|on a farm|in a cinema"),
    ("What does a baker make?", "bread", "shoes|chairs|medicine"),
    ("Who puts out fires?", "firefighters", "teachers|bakers|pilots"),
    ("Who flies an airplane?", "a pilot", "a farmer|a dentist|a librarian"),
    ("Who teaches children at school?", "a teacher", "a pilot|a plumber|a chef"),
    ("What do you wear on your feet?", "shoes", "a hat|gloves|a scarf"),
    ("What do you wear on your hands when it is cold?", "gloves", "boots|a belt|socks"),
    ("Which season is usually the coldest?", "winter", "summer|spring|autumn"),
    ("Which season is usually the hottest?", "summer", "winter|autumn|spring"),
    ("What does a thermometer measure?", "temperature", "weight|distance|speed"),
    ("What does a clock show?", "the time", "the weather|the distance|the weight"),
    ("What is a baby cat called?", "a kitten", "a puppy|a calf|a foal"),
    ("What is a baby dog called?", "a puppy", "a kitten|a lamb|a chick"),
    ("What is a baby sheep called?", "a lamb", "a cub|a calf|a kitten"),
    ("What is frozen water called?", "ice", "steam|sand|oil"),
    ("What do you smell with?", "your nose", "your ears|your elbows|your knees"),
    ("What do you hear with?", "your ears", "your nose|your feet|your hair"),
    ("Which organ pumps blood around the body?", "the heart", "the lungs|the stomach|the skin"),
    ("Which organs do we breathe with?", "the lungs", "the kidneys|the ears|the bones"),
    ("What do you need to open a locked door?", "a key", "a spoon|a coin|a cup"),
    ("What do you put on a letter before you post it?", "a stamp", "a button|a leaf|a coin"),
    ("What do people sleep on?", "a bed", "a table|a shelf|a stove"),
    ("In which room do people usually cook food?", "the kitchen", "the garage|the bedroom|the bathroom"),
    ("What do you use to dry yourself after a bath?", "a towel", "a fork|a hammer|a book"),
    ("Which vehicle runs on rails?", "a train", "a bicycle|a boat|a car"),
    ("Which vehicle flies in the sky?", "an airplane", "a bus|a truck|a ship"),
    ("What do you use to take a photo?", "a camera", "a kettle|a ruler|a broom"),
    ("What is bread mostly made from?", "flour", "chocolate|cheese|meat"),
    ("What do you use to eat soup?", "a spoon", "a knife|a comb|a key"),
    ("Where do you buy medicine?", "at a pharmacy", "at a cinema|at a stadium|at a car wash"),
    ("Where do people watch films on a big screen?", "at a cinema", "at a pharmacy|at a post office|at a bank"),
    ("Who serves food in a restaurant?", "a waiter", "a pilot|a judge|a miner"),
    ("What do you hit a nail with?", "a hammer", "a spoon|a brush|a pillow"),
    ("What do you use to call someone who is far away?", "a telephone", "a ladder|a pillow|a spoon"),
    ("What do cars need to run?", "fuel", "flour|milk|sand"),
    ("Where do you wash your dirty clothes?", "in a washing machine", "in an oven|in a bookshelf|in a mailbox"),
    ("What do you wear to keep the sun out of your eyes?", "sunglasses", "a scarf|boots|gloves"),
    ("Where do people borrow books?", "at a library", "at a bakery|at a garage|at a zoo"),
    ("What do people use to pay in a shop?", "money", "leaves|stones|sand"),
    ("Which animal do we get wool from?", "the sheep", "the pig|the chicken|the fish"),
    ("What do people do at night?", "sleep", "sunbathe|swim in the sea|mow the lawn"),
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack", "Lucy", "Omar"]
ORDERS = [("older", "oldest", "youngest"), ("taller", "tallest", "shortest"),  # (comparative, most, least)
          ("faster", "fastest", "slowest"), ("heavier", "heaviest", "lightest")]

GROUPS = {  # "Which of these is a fruit?": one member of the group, one of each of three other groups
    "fruit": ["apple", "banana", "pear", "grape", "cherry", "plum"],
    "vegetable": ["carrot", "potato", "onion", "cabbage", "lettuce"],
    "bird": ["eagle", "sparrow", "robin", "pigeon", "parrot"],
    "fish": ["salmon", "trout", "cod", "tuna"],
    "insect": ["ant", "beetle", "butterfly", "wasp"],
    "vehicle": ["car", "bus", "train", "bicycle", "truck"],
    "piece of furniture": ["chair", "table", "sofa", "bed", "desk"],
    "piece of clothing": ["shirt", "coat", "hat", "sock", "dress"],
    "tool": ["hammer", "saw", "drill", "spanner", "screwdriver"],
    "musical instrument": ["piano", "guitar", "violin", "drum", "flute"],
    "drink": ["tea", "coffee", "juice", "lemonade"],
    "sport": ["football", "tennis", "golf", "hockey"],
    "shape": ["circle", "square", "triangle", "rectangle"],
    "part of the body": ["elbow", "knee", "shoulder", "ankle", "finger"],
}
