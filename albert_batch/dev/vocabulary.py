"""The words of the demo corpus: people's names by naming tradition, places, organisations, products,
and the sentence templates that place them, neutral or bearing a sentiment, for reviews and news."""

from __future__ import annotations

# Person names are drawn per naming tradition so that combinations look plausible; family_first marks
# traditions where the family name is written first (the short form is then the family name).
# (given names, family names, family_first)
NAME_POOLS: tuple[tuple[tuple[str, ...], tuple[str, ...], bool], ...] = (
    (("Emily", "James", "Olivia", "Michael", "Hannah", "Daniel"),
     ("Carter", "Thompson", "Reynolds", "Whitaker", "Hughes", "Bennett"), False),
    (("Björn", "Ingrid", "Sigrid", "Lars", "Freya", "Anders"),
     ("Ågren", "Lindqvist", "Håkansson", "Sørensen", "Nyström", "Eriksson"), False),
    (("Aoife", "Niamh", "Siobhán", "Róisín"), ("Ní Bhriain", "Ní Dhomhnaill", "Kavanagh", "Byrne"), False),
    (("Cillian", "Pádraig", "Oisín"), ("Ó Súilleabháin", "Mac Cárthaigh", "Kavanagh", "Byrne"), False),
    (("José", "Lucía", "Mateo", "Camila", "João", "Inês"),
     ("Álvarez", "García", "Fernández", "Oliveira", "Santos", "Muñoz"), False),
    (("Oluwaseun", "Chiamaka", "Adebayo", "Ngozi", "Tunde"), ("Adeyemi", "Okafor", "Balogun", "Eze", "Nwosu"), False),
    (("Wei", "Xiaoling", "Jun", "Mei", "Hao"), ("Zhang", "Wang", "Chen", "Liu", "Zhao"), True),
    (("Min-jun", "Ji-woo", "Seo-yeon", "Hyun-woo"), ("Kim", "Park", "Lee", "Choi"), True),
    (("Haruto", "Yui", "Sakura", "Kenji"), ("Tanaka", "Suzuki", "Watanabe", "Nakamura"), False),
    (("Jürgen", "Anneliese", "Lukas", "Greta"), ("Müller", "Schäfer", "Weiß", "Köhler"), False),
    (("Élodie", "François", "Chloé", "Thibault"), ("Lefèvre", "Dubois", "Moreau", "Girard"), False),
    (("Priya", "Arjun", "Ananya", "Rohan"), ("Sharma", "Iyer", "Chatterjee", "Patel"), False),
    (("Małgorzata", "Piotr", "Zofia", "Krzysztof"), ("Nowak", "Wójcik", "Kaczmarek", "Mazur"), False),
    (("Layla", "Omar", "Yasmin", "Karim"), ("Haddad", "Mansour", "El-Sayed", "Khalil"), False),
)

LOCATIONS = (
    "São Paulo", "New York", "Buenos Aires", "Los Angeles", "Hong Kong", "Cape Town", "Kuala Lumpur",
    "Rio de Janeiro", "New Delhi", "Mexico City", "Abu Dhabi", "London", "Paris", "Berlin", "Tokyo", "Lagos",
    "Nairobi", "Reykjavík", "Kraków", "Zürich", "Malmö", "Dublin", "Galway", "Lisbon", "Madrid", "Seoul",
    "Osaka", "Shanghai", "Mumbai", "Bengaluru", "Toronto", "Montréal", "Sydney", "Auckland", "Cairo", "Accra",
    "Lima", "Bogotá", "Istanbul", "Helsinki", "Oslo", "Vienna", "Prague", "Brazil", "Germany", "Nigeria",
    "Japan", "Ireland", "Iceland", "Kenya", "Canada", "Portugal", "New Zealand", "South Korea", "South Africa",
    "Sri Lanka", "Costa Rica", "Côte d'Ivoire",
)

ORGANISATIONS = (
    "Northwind Traders", "Acme Corp", "Contoso Pharmaceuticals", "Globex Corporation", "Initech",
    "Fabrikam Industries", "Wide World Importers", "Tailspin Toys", "Adventure Works", "Litware Systems",
    "Blue Yonder Airlines", "Margie's Travel", "Proseware", "Coho Winery", "Alpine Ski House",
    "Lucerne Publishing", "Trey Research", "Woodgrove Bank", "Fourth Coffee", "Humongous Insurance",
    "Helios Analytics", "Greenfield Foods", "Kestrel Aerospace", "Meridian Health", "Polaris Telecom",
    "Orion Logistics", "Bluewater Shipping", "Red Maple Bank", "Silverline Rail", "Quantum Leaf Labs",
    "Harbor & Finch", "Vantage Motors", "Cobalt Mobile", "Evergreen Mutual", "Ironbridge Capital",
    "Brightwave Electronics", "Nordvik Energi", "Banco Estrela",
)

FIRST_NAMES = tuple(dict.fromkeys(n for given, _, _ in NAME_POOLS for n in given))
LAST_NAMES = tuple(dict.fromkeys(n for _, family, _ in NAME_POOLS for n in family))

PRODUCTS = (
    "headphones", "blender", "backpack", "coffee maker", "e-reader", "running shoes", "vacuum cleaner",
    "desk lamp", "phone case", "smartwatch", "air fryer", "tent", "electric kettle", "keyboard", "office chair",
    "water bottle", "power bank", "rice cooker", "bluetooth speaker", "winter jacket",
)
ASPECTS = (
    "battery life", "sound quality", "build quality", "customer service", "delivery", "packaging", "design",
    "setup", "fit", "finish", "display", "warranty support",
)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
NUM_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve")

# --- Sentence templates -----------------------------------------------------------------------------------
# {PER} {LAST} {LOC} {ORG} are entity slots; {PRODUCT} {ASPECT} {NUM} {BIGNUM} {PRICE} {DAY} {MONTH} {YEAR}
# are plain filler. Every template starts with a capital letter or an entity.

REVIEW_NEUTRAL = (
    "I bought this {PRODUCT} from {ORG} last {MONTH}.",
    "Ordered the {PRODUCT} as a gift for my sister in {LOC}.",
    "It shipped from the {ORG} warehouse in {LOC} and arrived after {NUM} days.",
    "My colleague {PER} recommended it to me.",
    "{PER} from the {ORG} support team answered my first email.",
    "I have been using it daily for {NUM} weeks now.",
    "For context, I live in {LOC} and use it mostly at home.",
    "Paid {PRICE} for it during a sale.",
    "This is my second {PRODUCT} from {ORG}.",
    "I compared it with a similar model before buying.",
    "We use it mostly on weekends.",
    "The box included a manual in {NUM} languages.",
    "My partner {PER} uses it more than I do.",
    "It is the {YEAR} model, bought through the {ORG} online shop.",
)

REVIEW_POSITIVE = (
    "Absolutely love this {PRODUCT}!",
    "The {ASPECT} is excellent, far better than I expected.",
    "Honestly the best purchase I have made this year.",
    "Works perfectly right out of the box.",
    "Great value for the money.",
    "Highly recommend it to anyone looking for a reliable {PRODUCT}.",
    "The {ASPECT} is superb and it feels really well made.",
    "{ORG} did a fantastic job with this one.",
    "Setup took two minutes and it has worked flawlessly since.",
    "I am delighted with it and would buy it again without hesitation.",
    "Five stars, no complaints at all.",
    "It exceeded my expectations in every way.",
    "Customer service at {ORG} was friendly and incredibly helpful.",
    "{PER} at the store in {LOC} was wonderful and helped me pick the right one.",
    "Sturdy, elegant and a joy to use.",
    "My whole family is thrilled with it.",
    "The {ASPECT} is outstanding for this price.",
    "Arrived early in {LOC}, beautifully packaged and in perfect condition.",
    "Impressive quality, it still looks brand new after months of use.",
    "Quiet, fast and very easy to clean.",
    "A brilliant little {PRODUCT} that does exactly what it promises.",
    "I had doubts at first, but it won me over completely.",
    "Easily the most comfortable {PRODUCT} I have owned.",
    "Fantastic {ASPECT}, I am genuinely happy with this.",
    "Worth every penny.",
    "Would happily recommend {ORG} to friends in {LOC}.",
    "Everything about it feels thoughtful and polished.",
    "It makes my mornings so much better.",
)

REVIEW_NEGATIVE = (
    "Terrible {PRODUCT}, it broke after {NUM} days.",
    "The {ASPECT} is awful and nothing like the description.",
    "Complete waste of money.",
    "It stopped working within a week.",
    "Very disappointed with this purchase.",
    "I would not recommend it to anyone.",
    "The {ASPECT} is poor and it feels cheap and flimsy.",
    "{ORG} should be embarrassed to sell this.",
    "Customer service at {ORG} was rude and completely unhelpful.",
    "Arrived in {LOC} damaged, with a cracked casing and missing parts.",
    "One star, and only because zero is not an option.",
    "It overheats constantly and smells of burnt plastic.",
    "Returning it immediately.",
    "{PER} from {ORG} promised a refund that never came.",
    "Noisy, slow and a nightmare to clean.",
    "The worst {PRODUCT} I have ever owned.",
    "Frustrating to set up and the instructions are useless.",
    "After {NUM} weeks it is already falling apart.",
    "Save yourself the trouble and buy something else.",
    "Horrible experience from start to finish.",
    "It looks nothing like the photos and feels badly made.",
    "Overpriced junk that fails at the one thing it should do.",
    "I regret buying it and I am still waiting for {ORG} to respond.",
    "The {ASPECT} is a joke, unacceptable at this price.",
    "Two replacements from {ORG}, both defective.",
    "My order to {LOC} was delayed for weeks and then arrived broken.",
    "Uncomfortable, unreliable and badly designed.",
)

NEWS_NEUTRAL = (
    "{ORG} is headquartered in {LOC}.",
    "The announcement was made at a press conference in {LOC} on {DAY}.",
    "{PER}, who has led {ORG} since {YEAR}, spoke to reporters after the meeting.",
    "The company employs about {BIGNUM} people across {NUM} countries.",
    "According to a statement, the plans were approved by the board on {DAY}.",
    "{PER} of {ORG} declined to give further details.",
    "Analysts in {LOC} had been following the story closely.",
    "The report was published on {DAY} by researchers at {ORG}.",
    "{LAST} said the figures would be reviewed again next quarter.",
    "Officials in {LOC} are expected to comment later this week.",
    "The deal was first reported by local media in {LOC}.",
    "A spokesperson for {ORG} confirmed the timeline on {DAY}.",
    "The next review is scheduled for {MONTH}.",
    "{PER}, an economist based in {LOC}, said more data would be needed.",
)

NEWS_POSITIVE = (
    "{ORG} reported record profits for the quarter, beating expectations.",
    "The new clinic in {LOC} has been widely praised by patients and staff.",
    "{PER} welcomed the breakthrough as a major success for the region.",
    "Residents of {LOC} celebrated the reopening of the historic bridge.",
    "The partnership between {ORG} and {ORG} is expected to create {BIGNUM} new jobs.",
    "Investors cheered the news, sending shares sharply higher.",
    "The festival drew huge crowds and glowing reviews.",
    "{PER} was honoured with an award for outstanding community work.",
    "Unemployment in {LOC} fell to its lowest level in a decade.",
    "The team's remarkable victory delighted fans across {LOC}.",
    "Researchers at {ORG} announced a promising advance in battery technology.",
    "The rescue operation was a complete success, and everyone was brought home safely.",
    "Critics hailed the exhibition as brilliant and inspiring.",
    "{ORG} received warm praise for its generous donation to local schools.",
    "The upgrade to the rail network in {LOC} was finished ahead of schedule and under budget.",
    "Tourism in {LOC} is booming, with hotels reporting excellent bookings.",
    "{PER} described the agreement as a historic win for workers.",
    "Local businesses are thriving since the new market opened.",
    "The charity run raised a record amount for the children's hospital.",
    "Air quality in {LOC} has improved dramatically, a study found.",
    "{ORG} was named the best place to work in {LOC} for the third year running.",
    "The launch went smoothly and customers responded with enthusiasm.",
    "Volunteers were thanked for their wonderful, tireless efforts.",
    "{PER} said the team was proud and grateful for the strong support.",
    "The mayor of {LOC} praised the project as a model of success.",
    "Exports rose strongly, and {ORG} raised its forecast for the year.",
    "{LAST} called it the best result in the history of the company.",
)

NEWS_NEGATIVE = (
    "{ORG} announced {BIGNUM} layoffs amid falling sales.",
    "The scandal has badly damaged public trust in {ORG}.",
    "{PER} sharply criticised the decision as reckless and unfair.",
    "Flooding in {LOC} destroyed homes and left thousands without power.",
    "Shares of {ORG} plunged after the disappointing results.",
    "The project in {LOC} is years behind schedule and massively over budget.",
    "Residents of {LOC} expressed anger over the worsening pollution.",
    "The company faces a lawsuit over its failure to protect customer data.",
    "{PER} resigned after a damning report revealed serious mismanagement.",
    "Hospitals in {LOC} warned of dangerous staff shortages.",
    "The collapse of the talks was a bitter blow for workers at {ORG}.",
    "Critics slammed the exhibition as dull and confused.",
    "A recall of faulty heaters by {ORG} followed several reported fires.",
    "Commuters in {LOC} endured another week of chaotic delays and cancellations.",
    "The regulator fined {ORG} for misleading advertising.",
    "Crime in {LOC} rose sharply for the second year in a row.",
    "{PER} called the outcome a disaster for small businesses.",
    "The team suffered a humiliating defeat in front of a furious crowd in {LOC}.",
    "Investors fear the losses at {ORG} will deepen next year.",
    "The outage left customers stranded and frustrated for hours.",
    "Protesters in {LOC} condemned the cuts as cruel and short-sighted.",
    "The failed merger of {ORG} and {ORG} cost shareholders dearly.",
    "Drought has ruined harvests across {LOC}, pushing food prices higher.",
    "{LAST} admitted the rollout had been a serious mistake.",
    "Inspectors found unsafe conditions at the {ORG} factory in {LOC}.",
    "Consumer confidence slumped to its weakest level in years.",
)

POSITIVE_EMOJI = ("😀", "👍", "✨")
NEGATIVE_EMOJI = ("😡", "🙄")
