"""Build the ftlab course datasets: deterministic, seeded, rebuildable, scalable.

Everything here is synthetic and written for this course: the support desk of *Brightwave Home*,
a fictional company that sells small home appliances. No real people, orders or phone numbers.

    python data/build_datasets.py                      # rebuild data/ exactly as shipped
    python data/build_datasets.py --scale 4            # 4x more instruction/chat/corpus/preference data
    python data/build_datasets.py --train 5000 --out /tmp/bigger
    python data/build_datasets.py --stats              # token-length table (needs the tokenizer)
    python data/build_datasets.py --verify-probes      # re-check probes.jsonl with the real model
    python data/build_datasets.py --build-replay       # general_replay.jsonl: the real model's own answers
    python data/build_datasets.py --score-base 40      # base model score on 40 test examples per task

Same seed and flags -> byte-identical files. The probe set and the general replay set are the
exceptions: they depend on what the real model answers, so only ``--verify-probes`` and
``--build-replay`` write them.

How generalisation is measured: every task has *instruction templates* (phrasings) and, for the
inputs, pools of formats and sentences. Each pool is cut into a part for training/validation and a
part reserved for the test split, so the test split asks for the same skills in words the model
never saw during training. Every record carries its template id in ``template``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
import sys
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
SEED = 1234
SIZES = {"train": 2400, "validation": 300, "test": 300}
CHAT_SIZES = {"train": 1200, "validation": 150, "test": 150}
CORPUS_DOCS = 600
PREFERENCE_PAIRS = 600
TASKS = ("extract_json", "classify", "rewrite", "qa")
LABELS = ("billing", "shipping", "technical", "account", "other")

# Kept identical to ftlab.data.SYSTEM_PROMPT (a test checks it); the script does not import
# ftlab so that it runs from a bare checkout.
SYSTEM_PROMPT = ("You are the support assistant of Brightwave Home. "
                 "Do exactly what the user asks and reply in the requested format, with nothing else.")

# --------------------------------------------------------------------------- the world

FIRST_NAMES = [
    "Ana", "Ben", "Chiara", "Dmitri", "Elif", "Farah", "Goran", "Hana", "Ines", "Jonas", "Kemal",
    "Lena", "Marco", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Samir", "Tessa", "Umar",
    "Vera", "Wim", "Ximena", "Yusuf", "Zoe", "Aiko", "Bruno", "Carmen", "Dara", "Emeka", "Freya",
    "Gustavo", "Helga", "Ivan", "Julia", "Kofi", "Laila", "Mateo", "Noor",
]
LAST_NAMES = [
    "Silva", "Novak", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Haddad", "Kowalski", "Rossi",
    "Becker", "Nguyen", "Fischer", "Alvarez", "Petrova", "Osei", "Brennan", "Yilmaz", "Santos",
    "Kaur", "Jensen", "Dubois", "Mendes", "Larsen", "Costa", "Hoffmann", "Ibrahim", "Park",
    "Schmidt", "Varga", "Watanabe", "Quinn", "Romero", "Sato", "Eriksen", "Mbeki", "Horvat",
]
# name -> (category word used in prose, unit price in USD)
PRODUCTS = {
    "AeroKettle Mini": ("kettle", 39.90), "AeroKettle Steel": ("kettle", 54.00),
    "LumiDesk Lamp": ("lamp", 29.50), "PureBrew Coffee Maker": ("coffee maker", 119.00),
    "SnapCharge Dock": ("charging dock", 45.00), "QuietFan Tower": ("fan", 89.99),
    "Orbit Robot Vacuum": ("robot vacuum", 249.00), "ThermoMug Pro": ("travel mug", 24.95),
    "Nimbus Air Purifier": ("air purifier", 159.00), "FlexiBlend Blender": ("blender", 74.50),
    "GlowStrip Light Kit": ("light strip", 34.00), "CrispAir Fryer": ("air fryer", 99.00),
    "BreezeHeat Heater": ("heater", 64.90), "PixelFrame Display": ("photo frame", 79.00),
    "SteamPress Iron": ("iron", 42.00), "AquaPure Filter Jug": ("filter jug", 19.99),
}
PRODUCT_NAMES = list(PRODUCTS)
CITIES = ["Lyon", "Porto", "Leeds", "Graz", "Aarhus", "Bilbao", "Utrecht", "Krakow", "Turin",
          "Tampere", "Cork", "Brno", "Ghent", "Malmo", "Split", "Bergen", "Nantes", "Cluj",
          "Basel", "Valencia", "Dresden", "Lucerne", "Galway", "Bologna"]
CARRIERS = ["ParcelGo", "SwiftShip", "NorthPost", "Bluebird Express", "RapidCrate"]
STATUSES = ["processing", "shipped", "delivered", "returned", "on hold"]
NUM_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
# Spelled out rather than taken from calendar/strftime, which follow the machine's locale.
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def split_pool(items, n_test):
    """Cut a pool in two: the first part for train/validation, the last ``n_test`` items for test."""
    return {"train": items[:-n_test], "test": items[-n_test:]}


def pool_for(pools, split):
    return pools["test"] if split == "test" else pools["train"]


# --------------------------------------------------------------------------- noise

FILLER = split_pool([
    "I have been a Brightwave customer for years.",
    "Sorry for the long message.",
    "It has been a stressful week, to be honest.",
    "My sister recommended your shop to me.",
    "I am writing from my phone, so excuse any typos.",
    "Thanks in advance for your patience.",
    "I tried the chat on your website first but it was closed.",
    "The weather here has been awful all week.",
    "I usually love your products.",
    "I hope this is the right address for this.",
    "Please get back to me when you can.",
    "My cat keeps walking over the keyboard.",
    "I read the FAQ page but it did not help.",
    "I am not in a hurry, but I would like an answer.",
    "This is my second message about it.",
    "I work night shifts, so email is best.",
    "Honestly, I expected better.",
    "Have a nice day.",
    "Let me know if you need photos.",
    "I already restarted my router twice today for other reasons.",
], 5)

DISTRACTOR_NUMBERS = [
    "My ticket reference is #T{ticket}.", "You can call me on {phone}.",
    "My loyalty card number is {card}.", "I live at {house} {street} Street.",
    "Last year I spent over ${spent} in your shop.",
]

KEYBOARD_NEIGHBOURS = {"a": "s", "e": "r", "i": "o", "o": "p", "n": "m", "t": "r", "s": "d", "r": "t", "l": "k"}


def add_typos(rng, sentence, rate=0.06):
    """Misspell a few longer words (swap two letters or hit a neighbouring key)."""
    words = sentence.split(" ")
    for i, w in enumerate(words):
        if len(w) > 4 and w.isalpha() and w.islower() and rng.random() < rate:
            j = rng.randrange(1, len(w) - 2)
            if rng.random() < 0.5:
                w = w[:j] + w[j + 1] + w[j] + w[j + 2:]
            elif w[j] in KEYBOARD_NEIGHBOURS:
                w = w[:j] + KEYBOARD_NEIGHBOURS[w[j]] + w[j + 1:]
            words[i] = w
    return " ".join(words)


def random_phone(rng):
    return rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)


def distractor_sentence(rng):
    area, mid, last = random_phone(rng)
    return rng.choice(DISTRACTOR_NUMBERS).format(
        ticket=rng.randint(10000, 99999), phone=f"{area}-{mid}-{last:04d}", card=rng.randint(10**7, 10**8 - 1),
        house=rng.randint(1, 200), street=rng.choice(["Mill", "Station", "Church", "Harbour", "Oak"]),
        spent=rng.randint(200, 1500))


# --------------------------------------------------------------------------- tickets (classify, extract_json)

ISSUES = {
    "billing": split_pool([
        "I was charged twice for the same order.",
        "The refund you promised two weeks ago has still not reached my card.",
        "My invoice shows the wrong amount.",
        "The discount code was not applied at checkout.",
        "My payment was declined but the money left my account anyway.",
        "I need a VAT invoice with my company name on it.",
        "You billed me for express delivery, which I never chose.",
        "There is a charge on my statement that I do not recognise.",
        "The price dropped a day after I paid; can I get the difference back?",
        "My gift card balance disappeared after the purchase.",
        "I was charged in euros instead of dollars.",
        "The monthly payment plan took two instalments this month.",
        "Please cancel the charge, the order was never confirmed.",
        "The receipt lists an item I did not buy.",
    ], 4),
    "shipping": split_pool([
        "The parcel has not arrived, although it was due last Friday.",
        "The tracking page has not changed for six days.",
        "The courier left the box with a neighbour I do not know.",
        "I gave the wrong delivery address and need to change it.",
        "The package arrived crushed and the item rattles inside.",
        "Only half of my order was in the box.",
        "The delivery was marked as completed, but nothing came.",
        "Can you ship it to a pickup point instead of my home?",
        "The driver never rang the bell and took the parcel back.",
        "My order is stuck at customs.",
        "I received someone else's parcel.",
        "The estimated delivery date keeps moving back.",
        "Can the delivery wait until I am back from holiday?",
        "The box was delivered to my old address.",
    ], 4),
    "technical": split_pool([
        "It will not switch on, even with a new socket.",
        "The app cannot find the device during pairing.",
        "The display shows error E4 after a few minutes.",
        "It makes a loud grinding noise when running.",
        "The battery is empty after only an hour.",
        "The firmware update stopped halfway and now it is frozen.",
        "It keeps disconnecting from the wifi.",
        "The buttons do not respond any more.",
        "It gets very hot on the side after a short time.",
        "The light flickers every few seconds.",
        "It turns itself off in the middle of a cycle.",
        "The timer resets every time I open the lid.",
        "Water leaks from the bottom after each use.",
        "The remote control does nothing at all.",
    ], 4),
    "account": split_pool([
        "I cannot log in even after resetting my password.",
        "The password reset email never arrives.",
        "Please change the email address on my account.",
        "I would like my account and all my data deleted.",
        "The two-factor code is not sent to my phone any more.",
        "Someone else seems to have logged into my account.",
        "I have two accounts and want them merged.",
        "My account was locked after too many attempts.",
        "I cannot update my saved delivery address in my profile.",
        "Please unsubscribe me from all newsletters.",
        "My order history is empty although I have ordered before.",
        "The website says my email is already registered, but I never signed up.",
        "I want to change the name on my account after my marriage.",
        "My loyalty points vanished from my profile.",
    ], 4),
    "other": split_pool([
        "I just wanted to say the product is great and your team was very kind.",
        "Do you have a shop in my city where I can see the products?",
        "Are you hiring for the support team?",
        "I have an idea for a feature in your next model.",
        "Could you send me your latest catalogue?",
        "Do you offer discounts for schools?",
        "Is it possible to visit your warehouse with a student group?",
        "I would like to write a review of your products for my blog.",
        "Which of your products would you recommend for a small flat?",
        "Do you sponsor local sports clubs?",
        "What are the opening hours of your phone line on holidays?",
        "I want to suggest a colour for the next collection.",
        "Can I use your logo in a school presentation?",
        "Does your company plant trees for each order, like I heard?",
    ], 4),
}
# Remarks that mention another category's vocabulary without being about it: a keyword
# classifier trips on them, a reader does not.
CROSS_REMARKS = {
    "billing": ["Payment went through fine, by the way.", "The price was fair, no complaints there."],
    "shipping": ["The delivery itself was quick.", "The parcel arrived on time, that part was fine."],
    "technical": ["The device works perfectly otherwise.", "Setting it up was easy."],
    "account": ["I can log in without problems.", "My account details are all correct."],
    "other": ["I love the design, by the way.", "Your staff on the phone were lovely last time."],
}

ORDER_SENTENCES = split_pool([
    "I ordered {qty} {product} (order {oid}).",
    "Order {oid}: {qty} x {product}.",
    "My order number is {oid}, for {qty} {product}.",
    "Last week I bought {qty} {product}, order {oid}.",
    "This is about order {oid} ({qty} {product}).",
    "I received {qty} {product} with order {oid}.",
    "On order {oid} I got {qty} {product}.",
    "Regarding my purchase {oid} of {qty} {product}:",
    # Neutral on purpose: "... is the problem." here once called the product faulty in tickets of every
    # category, so 18 of the 75 classify test tickets read as "technical" whatever their label was.
    "This message is about the {product} I ordered ({qty} of them, order {oid}).",
    "Reference {oid} - {qty} {product}.",
], 3)
ORDER_SENTENCES_NO_ID = split_pool([
    "I bought {qty} {product} but I cannot find the order number.",
    "I got {qty} {product} as a gift, so I do not have an order number.",
    "It is about the {qty} {product} I bought recently (no order number, sorry).",
    "I have {qty} {product} from your shop; the order number is lost.",
], 1)
GREETINGS = ["Hello,", "Hi there,", "Dear Brightwave team,", "Good morning,", "Hey,", "To whom it may concern,", ""]
INTROS = split_pool(["My name is {name}.", "This is {name} writing.", "{name} here.",
                     "I am {name}.", "It's {name} again.", "{name} speaking."], 2)
SIGNATURES = split_pool(["Best regards,\n{name}", "Thanks,\n{name}", "- {name}", "Cheers, {name}",
                         "Kind regards, {name}", "Sent by {name}"], 2)
CLOSINGS = ["Thank you.", "Please help.", "Looking forward to your reply.", "What can you do?", ""]


def make_customer(rng):
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def make_order_id(rng):
    return f"BW-{rng.randint(100000, 999999)}"


def quantity_text(rng, qty):
    return NUM_WORDS[qty] if rng.random() < 0.35 else str(qty)


def make_ticket(rng, split, category=None):
    """A support ticket and the facts it contains.

    Returns ``(text, facts)`` where facts = customer, order_id (or None), product, quantity, category.
    """
    category = category or rng.choice(LABELS)
    facts = {
        "customer": make_customer(rng),
        "order_id": make_order_id(rng) if rng.random() < 0.85 else None,
        "product": rng.choice(PRODUCT_NAMES),
        "quantity": rng.choices([1, 2, 3, 4, 5], weights=[6, 3, 2, 1, 1])[0],
        "category": category,
    }
    order_pool = ORDER_SENTENCES if facts["order_id"] else ORDER_SENTENCES_NO_ID
    order_sentence = rng.choice(pool_for(order_pool, split)).format(
        qty=quantity_text(rng, facts["quantity"]), product=facts["product"], oid=facts["order_id"])
    body = [order_sentence, add_typos(rng, rng.choice(pool_for(ISSUES[category], split)))]
    if rng.random() < 0.5:
        body.append(add_typos(rng, rng.choice(pool_for(FILLER, split))))
    if rng.random() < 0.35:
        body.append(distractor_sentence(rng))
    if rng.random() < 0.3:
        other = rng.choice([c for c in LABELS if c != category])
        body.append(rng.choice(CROSS_REMARKS[other]))
    if rng.random() < 0.15 and facts["order_id"]:
        # An older, unrelated order: extraction must pick the one the ticket is about.
        body.append(f"(My previous order {make_order_id(rng)} was fine.)")
    first, rest = body[0], body[1:]
    rng.shuffle(rest)
    # The order sentence is usually first, but not always.
    body = [first] + rest if rng.random() < 0.7 else rest[:1] + [first] + rest[1:]
    name = facts["customer"]
    head, tail = [], []
    greeting = rng.choice(GREETINGS)
    if greeting:
        head.append(greeting)
    if rng.random() < 0.5:
        head.append(rng.choice(pool_for(INTROS, split)).format(name=name))
        closing = rng.choice(CLOSINGS)
        if closing:
            tail.append(closing)
    else:
        tail.append(rng.choice(pool_for(SIGNATURES, split)).format(name=name))
    text = " ".join(head + body)
    if tail:
        text += "\n" + "\n".join(tail)
    return text.strip(), facts


def extraction_target(facts):
    obj = {k: facts[k] for k in ("customer", "order_id", "product", "quantity")}
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


EXTRACT_TEMPLATES = split_pool([
    'Extract the customer name, order id, product and quantity from this support ticket. Reply with a JSON object with the keys "customer", "order_id", "product" and "quantity" (use null for a missing order id).',
    'Read the ticket and return only JSON: {"customer": ..., "order_id": ..., "product": ..., "quantity": ...}. quantity is a number; order_id is null if the ticket has none.',
    'Turn this customer message into a JSON record with the fields customer, order_id, product, quantity. Output the JSON only.',
    'Fill in this JSON from the ticket and print nothing else: {"customer": "", "order_id": "", "product": "", "quantity": 0}. Use null when there is no order id.',
    'Pull the key facts out of the email below as JSON (keys: customer, order_id, product, quantity).',
    'Parse the support request. Give back one JSON object with customer, order_id, product and quantity (an integer).',
    'Structured extraction: who wrote this, which order, which product, how many? Answer as JSON with keys customer, order_id, product, quantity.',
    'Convert the ticket into machine-readable JSON with exactly these keys: customer, order_id, product, quantity.',
    'I need the ticket data as JSON for our CRM: customer, order_id, product, quantity. No explanation.',
    'Return a compact JSON object describing this ticket (customer, order_id, product, quantity; order_id may be null).',
    'From the message, extract customer / order_id / product / quantity and format them as a JSON object.',
    'Read this and output JSON only. Fields: "customer" (full name), "order_id", "product", "quantity".',
    # test only
    'Our ticketing system only accepts JSON. Write the record for this message with the fields customer, order_id, product and quantity.',
    'What are the customer, order id, product and quantity in this request? Respond with nothing but a JSON object using the keys customer, order_id, product, quantity.',
    'Summarise the request below as a single JSON object. Required keys: customer, order_id (null if absent), product, quantity (number).',
    'Identify the sender, the order number, the item and how many units, and encode them as JSON with keys customer, order_id, product, quantity.',
], 4)

CLASSIFY_TEMPLATES = split_pool([
    "Classify this support ticket into one of: billing, shipping, technical, account, other. Reply with the label only.",
    "Which team should handle this message? Choose billing, shipping, technical, account or other. Answer with one word.",
    "Label the ticket. Allowed labels: billing, shipping, technical, account, other.",
    "Read the customer message and output its category (billing / shipping / technical / account / other).",
    "Categorise the following request. Possible answers: billing, shipping, technical, account, other. Give just the category.",
    "Route this ticket: billing, shipping, technical, account or other?",
    "What is this ticket about? Pick exactly one label from billing, shipping, technical, account, other.",
    "Assign a category to the support email below (billing, shipping, technical, account, other). One word, lowercase.",
    "Topic classification. Labels: billing | shipping | technical | account | other. Output the label.",
    "Decide the queue for this message. Options: billing, shipping, technical, account, other. Reply with the option only.",
    "Tag this customer message with one of the five categories billing, shipping, technical, account, other.",
    "Sort this ticket into billing, shipping, technical, account or other, and write only the chosen label.",
    # test only
    "Our helpdesk has five queues: billing, shipping, technical, account and other. Name the queue this ticket belongs in, nothing more.",
    "Give the single best category for the text below. The category must be one of billing, shipping, technical, account, other.",
    "If you had to file this complaint under billing, shipping, technical, account or other, which would it be? Just the word.",
    "Triage: read the message and return its department (billing, shipping, technical, account, other).",
], 4)


def make_extract(rng, split):
    text, facts = make_ticket(rng, split)
    i, instruction = pick_template(rng, EXTRACT_TEMPLATES, split)
    return record(instruction, text, extraction_target(facts), "extract_json", split, i)


def make_classify(rng, split):
    text, facts = make_ticket(rng, split)
    i, instruction = pick_template(rng, CLASSIFY_TEMPLATES, split)
    return record(instruction, text, facts["category"], "classify", split, i)


# --------------------------------------------------------------------------- rewrite

def random_date(rng):
    start = dt.date(2022, 1, 1)
    return start + dt.timedelta(days=rng.randrange(0, 4 * 365))


def ordinal(n):
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


DATE_FORMATS = split_pool([
    lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",
    lambda d: f"{MONTHS[d.month - 1][:3]} {ordinal(d.day)} {d.year}",
    lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
    lambda d: f"the {ordinal(d.day)} of {MONTHS[d.month - 1]}, {d.year}",
    lambda d: f"{WEEKDAYS[d.weekday()]}, {MONTHS[d.month - 1]} {d.day}, {d.year}",
    lambda d: f"{MONTHS[d.month - 1].lower()} {d.day} {d.year}",
    lambda d: f"{d.day}.{d.month}.{d.year} (day.month.year)",
    # test only
    lambda d: f"{d.day}-{MONTHS[d.month - 1][:3]}-{d.year}",
    lambda d: f"{MONTHS[d.month - 1].upper()} {d.day} {d.year}",
    lambda d: f"{d.month}/{d.day}/{d.year} (US style)",
], 3)

PHONE_FORMATS = split_pool([
    lambda a, m, l: f"{a}.{m}.{l:04d}",
    lambda a, m, l: f"({a}) {m} {l:04d}",
    lambda a, m, l: f"{a}{m}{l:04d}",
    lambda a, m, l: f"+1 {a} {m} {l:04d}",
    lambda a, m, l: f"{a}-{m}-{l:04d}",
    lambda a, m, l: f"1-{a}-{m}-{l:04d}",
    lambda a, m, l: f"{a} {m} {l:04d} (mobile)",
    # test only
    lambda a, m, l: f"+1({a}){m}-{l:04d}",
    lambda a, m, l: f"tel: {a} / {m} {l:04d}",
], 2)

ACTIONS = {
    "refund": ["wants money back", "asks for a refund", "refund pls", "wants the payment returned"],
    "replacement": ["wants a new one sent", "needs a replacement unit", "send new unit", "asks for a replacement"],
    "repair": ["asks for repair", "wants it fixed", "repair under warranty", "needs it repaired"],
    "cancel": ["wants to cancel", "cancel order pls", "asks to cancel before shipping", "cancellation requested"],
    "exchange": ["wants a different colour", "exchange for other model", "swap for bigger size", "wants to exchange it"],
}
NOTE_FORMATS = split_pool([
    lambda c, o, a, p: f"{c.lower()} / {o} / {a} ({p})",
    lambda c, o, a, p: f"cust: {c}, ord {o} - {a}",
    lambda c, o, a, p: f"{o} {c.split()[1].upper()}, {c.split()[0]}: {a}",
    lambda c, o, a, p: f"called today. {c} ({o}) {a}, {p} faulty",
    lambda c, o, a, p: f"{a} -- {c.split()[1]}, {c.split()[0]} -- order {o}",
    lambda c, o, a, p: f"{c.upper()} re {o}: {a}",
    # test only
    lambda c, o, a, p: f"[{o}] customer={c.lower()} note={a}",
    lambda c, o, a, p: f"{p} issue; {a}; name {c.split()[1]}, {c.split()[0]}; order {o}",
], 2)

REWRITE_TEMPLATES = {
    "date": split_pool([
        "Rewrite this date in ISO format (YYYY-MM-DD). Output only the date.",
        "Normalise the date below to YYYY-MM-DD.",
        "Convert to ISO 8601 date format, nothing else:",
        "Our database stores dates as YYYY-MM-DD. Reformat this one.",
        "Write this date as year-month-day with two-digit month and day, e.g. 2024-03-05.",
        "Standardise the date to the form YYYY-MM-DD.",
        # test only
        "Give me this date the way a computer sorts it: four-digit year, dash, month, dash, day.",
        "Please restate the following date in ISO form and reply with that alone.",
    ], 2),
    "phone": split_pool([
        "Format this US phone number as +1-AAA-BBB-CCCC. Output only the number.",
        "Normalise the phone number to the form +1-AAA-BBB-CCCC.",
        "Rewrite the phone number in our standard format (+1-AAA-BBB-CCCC).",
        "Clean up this phone number. Required format: +1 then area code, exchange and line, separated by dashes.",
        "Convert the number below to +1-XXX-XXX-XXXX.",
        "Reformat the customer's phone number as +1-AAA-BBB-CCCC and print only that.",
        # test only
        "Our dialler needs numbers written like +1-212-555-0147. Write this one that way.",
        "Standardise this telephone number (country code +1, dashes between the groups).",
    ], 2),
    "notes": split_pool([
        "Turn these agent notes into the standard line: Customer: <First Last> | Order: <order id> | Action: <refund/replacement/repair/cancel/exchange>.",
        "Rewrite the note in the format 'Customer: First Last | Order: BW-###### | Action: one of refund, replacement, repair, cancel, exchange'.",
        "Reformat as: Customer: ... | Order: ... | Action: ... (Action is refund, replacement, repair, cancel or exchange; name in First Last order).",
        "Convert the scribbled note into our summary format: Customer: <name> | Order: <id> | Action: <refund|replacement|repair|cancel|exchange>.",
        "Normalise this case note to one line, 'Customer: <First Last> | Order: <id> | Action: <action>', using one of the actions refund, replacement, repair, cancel, exchange.",
        "Produce the CRM summary line (Customer: First Last | Order: id | Action: refund/replacement/repair/cancel/exchange) for this note.",
        # test only
        "Clean up this note for the case log. Write exactly one line: Customer: <First Last> | Order: <id> | Action: <refund, replacement, repair, cancel or exchange>.",
        "Our log format is 'Customer: First Last | Order: id | Action: word' where the word is refund, replacement, repair, cancel or exchange. Rewrite the note in it.",
    ], 2),
}


def make_rewrite(rng, split):
    kind = rng.choice(["date", "phone", "notes"])
    if kind == "date":
        d = random_date(rng)
        source, target = rng.choice(pool_for(DATE_FORMATS, split))(d), d.isoformat()
    elif kind == "phone":
        a, m, l = random_phone(rng)
        source, target = rng.choice(pool_for(PHONE_FORMATS, split))(a, m, l), f"+1-{a}-{m}-{l:04d}"
    else:
        customer, oid = make_customer(rng), make_order_id(rng)
        action = rng.choice(list(ACTIONS))
        product = PRODUCTS[rng.choice(PRODUCT_NAMES)][0]
        source = rng.choice(pool_for(NOTE_FORMATS, split))(customer, oid, rng.choice(ACTIONS[action]), product)
        target = f"Customer: {customer} | Order: {oid} | Action: {action}"
    i, instruction = pick_template(rng, REWRITE_TEMPLATES[kind], split)
    return record(instruction, source, target, "rewrite", split, i, prefix=f"rewrite-{kind}")


# --------------------------------------------------------------------------- qa

def make_order(rng):
    product = rng.choice(PRODUCT_NAMES)
    qty = rng.choices([1, 2, 3, 4], weights=[5, 3, 1, 1])[0]
    return {
        "order_id": make_order_id(rng), "customer": make_customer(rng), "product": product,
        "quantity": str(qty), "price": f"${PRODUCTS[product][1]:.2f}", "carrier": rng.choice(CARRIERS),
        "city": rng.choice(CITIES), "status": rng.choice(STATUSES), "date": random_date(rng).isoformat(),
    }


CONTEXT_STYLES = split_pool([
    lambda o: (f"Order {o['order_id']} was placed by {o['customer']} on {o['date']}. It contains {o['quantity']} x "
               f"{o['product']} at {o['price']} each and ships to {o['city']} with {o['carrier']}. "
               f"Current status: {o['status']}."),
    lambda o: (f"order_id: {o['order_id']}\ncustomer: {o['customer']}\nplaced: {o['date']}\nitem: {o['product']}\n"
               f"quantity: {o['quantity']}\nunit price: {o['price']}\ncarrier: {o['carrier']}\n"
               f"destination: {o['city']}\nstatus: {o['status']}"),
    lambda o: (f"{o['customer']} bought {o['quantity']} {o['product']} ({o['price']} each) on {o['date']}, "
               f"order {o['order_id']}. {o['carrier']} is delivering it to {o['city']}; the order is {o['status']}."),
    lambda o: (f"Shipment update for {o['order_id']}: status {o['status']}, carrier {o['carrier']}, destination "
               f"{o['city']}. Customer {o['customer']}, ordered {o['date']}, {o['quantity']} unit(s) of "
               f"{o['product']} at {o['price']}."),
    # test only
    lambda o: (f"| {o['order_id']} | {o['customer']} | {o['date']} | {o['product']} | qty {o['quantity']} | "
               f"{o['price']} | {o['carrier']} | {o['city']} | {o['status']} |"),
    lambda o: (f"Dear {o['customer']}, thank you for order {o['order_id']} of {o['date']}. Your {o['quantity']} "
               f"{o['product']} (unit price {o['price']}) will travel with {o['carrier']} to {o['city']}. "
               f"Status right now: {o['status']}."),
], 2)

# field -> question phrasings (train part, test part). {oid} is the order asked about.
QUESTIONS = {
    "customer": split_pool(["Who placed order {oid}?", "What is the name of the customer on order {oid}?",
                            "Which customer does order {oid} belong to?", "Whose order is {oid}?"], 1),
    "carrier": split_pool(["Which carrier delivers order {oid}?", "What shipping company handles {oid}?",
                           "Who is shipping order {oid}?", "Name the courier for order {oid}."], 1),
    "city": split_pool(["Which city is order {oid} going to?", "Where is order {oid} being shipped?",
                        "What is the destination of order {oid}?", "To which town does {oid} go?"], 1),
    "quantity": split_pool(["How many units are in order {oid}?", "What quantity was ordered in {oid}?",
                            "How many items did order {oid} contain?", "Count of units in order {oid}?"], 1),
    "price": split_pool(["What is the unit price in order {oid}?", "How much did one item cost in order {oid}?",
                         "What price per unit does order {oid} show?", "Cost of a single unit in {oid}?"], 1),
    "status": split_pool(["What is the status of order {oid}?", "Where does order {oid} stand right now?",
                          "What state is order {oid} in?", "Current state of {oid}?"], 1),
    "date": split_pool(["When was order {oid} placed?", "On which date was {oid} ordered?",
                        "What is the order date of {oid}?", "Date of purchase for order {oid}?"], 1),
    "product": split_pool(["Which product was bought in order {oid}?", "What item is in order {oid}?",
                           "What did the customer order in {oid}?", "Which article does order {oid} contain?"], 1),
}

QA_TEMPLATES = split_pool([
    "Answer the question using only the order information below. Reply with the answer only, no sentence.\nQuestion: {q}",
    "{q} Use the context and give just the answer.",
    "Read the record(s) and answer briefly: {q}",
    "Context is given below. Question: {q} Answer with the exact value from the context.",
    "Using the shipping data below, answer: {q} (short answer)",
    "Question: {q}\nAnswer with a single value taken from the text.",
    "Look up the answer in the order details. {q} Only the value, please.",
    "Based on the information provided, {q_lower} Answer in as few words as possible.",
    # test only
    "You are given order data. {q} Respond with the value alone, copied from the data.",
    "Find the answer in the text that follows and return only it. {q}",
    "Short-answer question about the order(s) below: {q}",
], 3)


def make_qa(rng, split):
    orders = [make_order(rng) for _ in range(rng.choice([1, 1, 2]))]
    style = rng.choice(pool_for(CONTEXT_STYLES, split))
    context = "\n\n".join(style(o) for o in orders)
    target_order = rng.choice(orders)
    field = rng.choice(list(QUESTIONS))
    question = rng.choice(pool_for(QUESTIONS[field], split)).format(oid=target_order["order_id"])
    i, template = pick_template(rng, QA_TEMPLATES, split)
    instruction = template.format(q=question, q_lower=question[0].lower() + question[1:])
    return record(instruction, context, target_order[field], "qa", split, i)


# --------------------------------------------------------------------------- records

def pick_template(rng, pools, split):
    """Return (template index within the whole list, text); test templates get indices after train ones."""
    pool = pool_for(pools, split)
    j = rng.randrange(len(pool))
    offset = len(pools["train"]) if split == "test" else 0
    return offset + j, pool[j]


def record(instruction, input_text, output, task, split, template_index, prefix=None):
    return {
        "instruction": instruction, "input": input_text, "output": output, "task": task,
        "template": f"{prefix or task}-{template_index:02d}",
    }


MAKERS = {"extract_json": make_extract, "classify": make_classify, "rewrite": make_rewrite, "qa": make_qa}


def _input_key(rec):
    """Uniqueness key over all splits: the input and answer; for rewrites the answer alone, so the
    same date (or phone number, or note) never appears twice, not even in two different formats."""
    if rec["task"] == "rewrite":
        return "rewrite " + rec["output"]
    return re.sub(r"[^a-z0-9]+", " ", f"{rec['input']} {rec['output']}".lower()).strip()


def build_instructions(rng, sizes):
    """Balanced over the four tasks; no input (with its answer) appears twice anywhere."""
    splits, seen = {}, set()
    for split in ("train", "validation", "test"):
        rows = []
        for n in range(sizes[split]):
            task = TASKS[n % len(TASKS)]
            for _ in range(100):
                rec = MAKERS[task](rng, "test" if split == "test" else "train")
                if _input_key(rec) not in seen:
                    break
            else:
                raise RuntimeError(f"could not make a new unique {task} example; the pools are too small for this size")
            seen.add(_input_key(rec))
            rows.append(rec)
        rng.shuffle(rows)
        splits[split] = rows
    return splits


# --------------------------------------------------------------------------- chat

FOLLOW_UPS = {
    "classify": split_pool(["Now classify the same ticket: billing, shipping, technical, account or other? Label only.",
                            "Thanks. Which category is it (billing, shipping, technical, account, other)?",
                            "And which team should get it? billing, shipping, technical, account or other."], 1),
    "extract_json": split_pool(['Now extract the customer, order_id, product and quantity as JSON (null for a missing order id).',
                                'Good. Give me its data as a JSON object with keys customer, order_id, product, quantity.',
                                'Next, the JSON record please: customer, order_id, product, quantity.'], 1),
    "qa": split_pool(["One more question about the same data: {q}", "Also: {q} Just the value.", "And {q_lower}"], 1),
}


def make_conversation(rng, split, index):
    """Two or three turns about the same ticket or order record, ending with an assistant turn."""
    pool_split = "test" if split == "test" else "train"
    kind = ("ticket", "qa", "rewrite")[index % 3]
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    turn_tasks = []
    if kind == "ticket":
        text, facts = make_ticket(rng, pool_split)
        first, second = rng.choice([("classify", "extract_json"), ("extract_json", "classify")])
        answers = {"classify": facts["category"], "extract_json": extraction_target(facts)}
        templates = {"classify": CLASSIFY_TEMPLATES, "extract_json": EXTRACT_TEMPLATES}
        t_idx, instruction = pick_template(rng, templates[first], pool_split)
        f_idx = rng.randrange(len(pool_for(FOLLOW_UPS[second], pool_split)))
        follow = pool_for(FOLLOW_UPS[second], pool_split)[f_idx]
        messages += [{"role": "user", "content": f"{instruction}\n\n{text}"},
                     {"role": "assistant", "content": answers[first]},
                     {"role": "user", "content": follow},
                     {"role": "assistant", "content": answers[second]}]
        turn_tasks = [first, second]
    elif kind == "qa":
        orders = [make_order(rng) for _ in range(rng.choice([1, 2]))]
        context = "\n\n".join(rng.choice(pool_for(CONTEXT_STYLES, pool_split))(o) for o in orders)
        fields = rng.sample(list(QUESTIONS), 2)
        t_idx, template = pick_template(rng, QA_TEMPLATES, pool_split)
        q_texts = []
        for field in fields:
            o = rng.choice(orders)
            q_texts.append((rng.choice(pool_for(QUESTIONS[field], pool_split)).format(oid=o["order_id"]), o[field]))
        q1, a1 = q_texts[0]
        q2, a2 = q_texts[1]
        f_idx = rng.randrange(len(pool_for(FOLLOW_UPS["qa"], pool_split)))
        follow = pool_for(FOLLOW_UPS["qa"], pool_split)[f_idx].format(q=q2, q_lower=q2[0].lower() + q2[1:])
        messages += [{"role": "user", "content": template.format(q=q1, q_lower=q1[0].lower() + q1[1:]) + "\n\n" + context},
                     {"role": "assistant", "content": a1},
                     {"role": "user", "content": follow},
                     {"role": "assistant", "content": a2}]
        turn_tasks, first = ["qa", "qa"], "qa"
    else:
        # Several rewrites in a row, each its own turn: the model must keep the format per turn.
        n_turns = rng.choice([2, 3])
        first_kind = t_template = None
        for turn in range(n_turns):
            rec = make_rewrite(rng, pool_split)
            kind_now = rec["template"].split("-")[1]
            if turn > 0 and kind_now == first_kind:
                content = f"Same for this one, please: {rec['input']}"
            else:
                content = f"{rec['instruction']}\n\n{rec['input']}"
            if turn == 0:
                first_kind, t_template = kind_now, rec["template"]
            messages += [{"role": "user", "content": content}, {"role": "assistant", "content": rec["output"]}]
            turn_tasks.append("rewrite")
        t_template = "chat-" + t_template
        return {"messages": messages, "task": "rewrite", "turn_tasks": turn_tasks, "template": t_template}
    template = f"chat-{first}-{t_idx:02d}"
    return {"messages": messages, "task": turn_tasks[-1], "turn_tasks": turn_tasks, "template": template}


def _chat_key(conv):
    text = " ".join(m["content"] for m in conv["messages"][1:]).lower()
    return re.sub(r"[^a-z0-9]+", " ", text).strip()


def build_chat(rng, sizes):
    splits, seen = {}, set()
    for split in ("train", "validation", "test"):
        rows = []
        for n in range(sizes[split]):
            for _ in range(100):
                conv = make_conversation(rng, split, n)
                if _chat_key(conv) not in seen:
                    break
            else:
                raise RuntimeError("could not make a new unique conversation")
            seen.add(_chat_key(conv))
            rows.append(conv)
        rng.shuffle(rows)
        splits[split] = rows
    return splits


# --------------------------------------------------------------------------- domain corpus

# Fixed facts about the company: the corpus states them consistently, so continued
# pre-training has something real to absorb.
WARRANTY_YEARS = {p: (3 if PRODUCTS[p][1] >= 90 else 2) for p in PRODUCT_NAMES}
POLICIES = [
    "Brightwave Home accepts returns within 30 days of delivery, as long as the item is complete.",
    "Refunds go back to the original payment method within 5 to 7 working days after the return arrives.",
    "Orders over $50 ship free within the EU; smaller orders pay a flat $4.90 delivery fee.",
    "Order numbers at Brightwave always start with BW- followed by six digits.",
    "The support line is open Monday to Friday from 8:00 to 18:00 CET.",
    "Every Brightwave appliance can be registered in the Brightwave Home app for warranty and firmware updates.",
    "A replacement unit is sent once the faulty one has been picked up by the courier.",
    "Customers can cancel an order free of charge until it has been handed to the carrier.",
]
TIPS = {
    "kettle": ["descale it once a month with white vinegar", "never run it empty", "keep the lid closed while boiling"],
    "lamp": ["clean the diffuser with a dry cloth", "use the app to set a warm evening scene"],
    "coffee maker": ["run a cleaning cycle every 40 brews", "use medium-ground beans"],
    "charging dock": ["keep the contacts free of dust", "use the supplied 30 W adapter"],
    "fan": ["wipe the grille every two weeks", "use night mode for quieter running"],
    "robot vacuum": ["empty the bin after every run", "keep the wheels free of hair", "update the map after moving furniture"],
    "travel mug": ["wash the lid by hand", "do not microwave it"],
    "air purifier": ["replace the filter every six months", "keep 30 cm of space around it"],
    "blender": ["add liquids before solids", "do not run it longer than one minute at a time"],
    "light strip": ["stick it to a clean, dry surface", "do not cut it between the marked points"],
    "air fryer": ["do not overfill the basket", "shake the basket halfway through"],
    "heater": ["never cover it", "keep it away from curtains"],
    "photo frame": ["add photos through the app", "turn on the sleep schedule at night"],
    "iron": ["use distilled water", "empty the tank after use"],
    "filter jug": ["change the cartridge every four weeks", "rinse a new cartridge before use"],
}


def make_corpus_doc(rng, i):
    kind = i % 4
    if kind == 0:  # help-centre article about one product
        product = rng.choice(PRODUCT_NAMES)
        word, price = PRODUCTS[product]
        tips = TIPS[word][:]
        rng.shuffle(tips)
        return (f"Help centre: caring for your {product}. The {product} is Brightwave's {word} and sells for "
                f"${price:.2f}. It comes with a {WARRANTY_YEARS[product]}-year warranty. To keep it working well, "
                + "; ".join(tips) + ". If it still misbehaves, register it in the Brightwave Home app and contact support "
                f"with your order number.")
    if kind == 1:  # resolved ticket summary
        text, facts = make_ticket(rng, "train")
        resolution = rng.choice({
            "billing": ["the billing team corrected the charge", "the payment records were checked and fixed"],
            "shipping": ["the carrier was contacted and the delivery sorted out", "the parcel was traced and rerouted"],
            "technical": ["a replacement unit was sent", "the customer was talked through a reset, which fixed it"],
            "account": ["the account was updated by the account team", "access to the account was restored"],
            "other": ["the request was forwarded to the right team", "the customer got a personal answer"],
        }[facts["category"]])
        return (f"Resolved case ({facts['category']}). Customer message: \"{text}\" Outcome: {resolution}, "
                f"and the customer was informed by email.")
    if kind == 2:  # policy page
        picked = rng.sample(POLICIES, 3)
        return "Brightwave Home customer policies. " + " ".join(picked)
    orders = [make_order(rng) for _ in range(2)]
    style = rng.choice(CONTEXT_STYLES["train"])
    return "Daily shipping log.\n" + "\n".join(style(o) for o in orders)


def build_corpus(rng, n_docs):
    docs, seen = [], set()
    i = 0
    while len(docs) < n_docs:
        text = make_corpus_doc(rng, i)
        i += 1
        if text not in seen:
            seen.add(text)
            docs.append({"text": text})
    return docs


# --------------------------------------------------------------------------- preferences

def rejected_answer(rng, rec):
    """A plausible but worse answer, of the kinds a base model gives: chatty, wrong, or malformed."""
    task, out = rec["task"], rec["output"]
    style = rng.random()
    if style < 0.4:  # right content, wrong format: wrapped in chat
        return rng.choice(["Sure! Here is the answer: ", "Of course. ", "Based on the text, the answer is "]) + out + \
            rng.choice([" Let me know if you need anything else!", " I hope this helps.", ""])
    if task == "classify":
        return rng.choice([label for label in LABELS if label != out])
    if task == "extract_json":
        obj = json.loads(out)
        field = rng.choice(list(obj))
        if field == "quantity":
            obj[field] = str(obj[field])  # a string where a number is required
        elif field == "order_id":
            obj[field] = make_order_id(rng)
        else:
            del obj[field]
        return json.dumps(obj, ensure_ascii=False) if rng.random() < 0.5 else "```json\n" + json.dumps(obj) + "\n```"
    if task == "rewrite":
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", out):
            y, m, d = out.split("-")
            return f"{y}-{d}-{m}" if d != m else f"{d}/{m}/{y}"
        if out.startswith("+1-"):
            return out[3:].replace("-", " ")
        return out.replace(" | ", ", ").replace("Customer: ", "")
    return rng.choice(["The context does not say.", "I am not sure, please check the order record.",
                       "I cannot answer that from the information given."])


def build_preferences(rng, n_pairs):
    pairs = []
    for n in range(n_pairs):
        task = TASKS[n % len(TASKS)]
        rec = MAKERS[task](rng, "train")
        prompt = f"{rec['instruction']}\n\n{rec['input']}"
        pairs.append({"prompt": prompt, "chosen": rec["output"], "rejected": rejected_answer(rng, rec),
                      "task": task, "template": rec["template"]})
    return pairs


# --------------------------------------------------------------------------- probes (checked against the real model)

# Candidate general-knowledge questions, each with accepted answers (whole words, any case).
# Only those SmolLM2-135M-Instruct answers correctly go into probes.jsonl (see --verify-probes).
PROBE_CANDIDATES = [
    ("What is the capital of France?", ["paris"]),
    ("What is the capital of Japan?", ["tokyo"]),
    ("What is the capital of Italy?", ["rome"]),
    ("What is the capital of Germany?", ["berlin"]),
    ("What is the capital of Spain?", ["madrid"]),
    ("What is the capital of the United Kingdom?", ["london"]),
    ("What is the capital of Russia?", ["moscow"]),
    ("What is the capital of Egypt?", ["cairo"]),
    ("What is the capital of Canada?", ["ottawa"]),
    ("What is the capital of Australia?", ["canberra"]),
    ("What is the capital of China?", ["beijing"]),
    ("What is the capital of Greece?", ["athens"]),
    ("What is the largest planet in our solar system?", ["jupiter"]),
    ("Which planet is known as the Red Planet?", ["mars"]),
    ("What planet do we live on?", ["earth"]),
    ("What is the closest star to Earth?", ["sun"]),
    ("What is the chemical symbol for water?", ["h2o", "h₂o"]),
    ("What gas do plants absorb from the air for photosynthesis?", ["carbon dioxide", "co2"]),
    ("What gas do humans need to breathe to survive?", ["oxygen"]),
    ("What is the chemical symbol for gold?", ["au"]),
    ("What is the boiling point of water in degrees Celsius at sea level?", ["100"]),
    ("What is the freezing point of water in degrees Celsius?", ["0", "zero"]),
    ("How many days are there in a week?", ["seven", "7"]),
    ("How many months are there in a year?", ["twelve", "12"]),
    ("How many hours are in a day?", ["24", "twenty-four"]),
    ("How many minutes are in an hour?", ["60", "sixty"]),
    ("How many legs does a spider have?", ["eight", "8"]),
    ("How many continents are there on Earth?", ["seven", "7"]),
    ("What is 2 + 2?", ["4", "four"]),
    ("What is 5 times 3?", ["15", "fifteen"]),
    ("What is 10 minus 4?", ["6", "six"]),
    ("What is the square root of 81?", ["9", "nine"]),
    ("Who wrote 'Romeo and Juliet'?", ["shakespeare"]),
    ("Who painted the Mona Lisa?", ["leonardo", "da vinci"]),
    ("Who developed the theory of relativity?", ["einstein"]),
    ("Who was the first president of the United States?", ["washington"]),
    ("What is the largest ocean on Earth?", ["pacific"]),
    ("What is the longest river in Africa?", ["nile"]),
    ("What is the tallest mountain in the world?", ["everest"]),
    ("What is the largest mammal in the world?", ["blue whale"]),
    ("What is the fastest land animal?", ["cheetah"]),
    ("What do bees make?", ["honey"]),
    ("What color is the sky on a clear day?", ["blue"]),
    ("What color are bananas when they are ripe?", ["yellow"]),
    ("What is the opposite of hot?", ["cold"]),
    ("What is the largest country in the world by area?", ["russia"]),
    ("Which language is mainly spoken in Brazil?", ["portuguese"]),
    ("Which language is spoken in Mexico?", ["spanish"]),
    ("What currency is used in Japan?", ["yen"]),
    ("What currency is used in the United Kingdom?", ["pound", "pounds", "pound sterling"]),
    ("What is the hardest natural substance?", ["diamond"]),
    ("What organ pumps blood through the human body?", ["heart"]),
    ("How many bones are in the adult human body?", ["206"]),
    ("What is the main ingredient of guacamole?", ["avocado"]),
    ("What is frozen water called?", ["ice"]),
    ("Which animal is known as the king of the jungle?", ["lion"]),
    ("In which country are the pyramids of Giza?", ["egypt"]),
    ("Which famous tower is in Paris?", ["eiffel"]),
    ("What is the largest desert in the world?", ["sahara", "antarctic"]),
    ("How many sides does a triangle have?", ["three", "3"]),
    ("How many sides does a hexagon have?", ["six", "6"]),
    ("What is the capital of the United States?", ["washington"]),
    ("Who discovered penicillin?", ["fleming"]),
    ("What force keeps us on the ground?", ["gravity"]),
    ("What is the primary language spoken in Germany?", ["german"]),
    ("What is the currency of the United States?", ["dollar"]),
    ("Which planet is closest to the Sun?", ["mercury"]),
    ("What is the smallest prime number?", ["2", "two"]),
    ("Which ocean lies between Europe and North America?", ["atlantic"]),
    ("What is the largest organ of the human body?", ["skin"]),
    ("What do caterpillars turn into?", ["butterfly", "butterflies", "moth", "moths"]),
    ("How many players are on a soccer team on the field?", ["eleven", "11"]),
]


def generate_greedy(model, tok, conversations, max_new_tokens=64, batch_size=24, desc="generating"):
    """Greedy answers for many conversations at once, as ``ftlab.chat`` would give them one by one:
    ftlab's one generation loop (``ftlab.evaluate.generate_answers``), batched because that is several
    times faster on a CPU."""
    from ftlab.evaluate import generate_answers

    print(f"{desc}: {len(conversations)} conversations")
    return generate_answers(model, tok, conversations, max_new_tokens=max_new_tokens, batch_size=batch_size)


def verify_probes(out_dir):
    """Ask the real model every candidate (greedy, chat template); keep only the ones it gets right."""
    sys.path.insert(0, str(DATA_DIR.parent))
    from ftlab import load_model
    from ftlab.data import score_probe

    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    replies = generate_greedy(model, tok, [[{"role": "user", "content": q}] for q, _ in PROBE_CANDIDATES],
                              max_new_tokens=48, desc="probes")
    kept = []
    for (question, answers), reply in zip(PROBE_CANDIDATES, replies):
        if score_probe(reply, answers):
            kept.append({"question": question, "answers": answers, "base_answer": reply})
        else:
            print(f"  dropped: {question!r} -> {reply[:100]!r}")
    write_jsonl(Path(out_dir) / "probes.jsonl", kept)
    print(f"probes: kept {len(kept)} of {len(PROBE_CANDIDATES)}")


# --------------------------------------------------------------------------- general replay (answered by the real model)

# General prompts for the replay set: small talk, short facts, arithmetic, definitions, advice,
# writing and language tasks. None is a probe candidate (tests/test_course_data.py checks that no
# prompt is near any probe question), so the probes still measure *transfer* of the mitigation.
REPLAY_PROMPTS = [
    # short facts (other topics than the probes)
    "How many wheels does a bicycle have?",
    "What do cows drink?",
    "Which season comes after winter?",
    "What is the plural of 'mouse'?",
    "What do you call a baby dog?",
    "What do you call a baby cat?",
    "Which animal is famous for its long neck?",
    "What instrument has black and white keys?",
    "What do we call the meal eaten in the morning?",
    "What is the color of grass?",
    "How many letters are in the English alphabet?",
    "What do you use to write on a blackboard?",
    "Which bird is a symbol of peace?",
    "What shape has four equal sides?",
    "What is a group of wolves called?",
    "What is the name of the galaxy we live in?",
    "What is the name of the toy made of interlocking plastic bricks from Denmark?",
    "Which sport uses a racket and a shuttlecock?",
    "What is the name for a word that means the same as another word?",
    "What do you call someone who studies the stars?",
    "Which metal is liquid at room temperature?",
    "What is the largest bone in the human body?",
    "What do we call animals that eat only plants?",
    "What is the process by which water turns into vapour?",
    "Which part of the plant takes in water from the soil?",
    "What is the name of the line that divides the Earth into northern and southern halves?",
    # arithmetic and units
    "What is 7 times 8?",
    "What is 12 plus 30?",
    "What is 100 divided by 4?",
    "What is half of 50?",
    "How many centimeters are in a meter?",
    "How many grams are in a kilogram?",
    "How many seconds are in a minute?",
    "What is 9 minus 3?",
    "If I have 3 apples and buy 4 more, how many apples do I have?",
    "What is 15 percent of 200?",
    # definitions and explanations
    "What is a noun?",
    "What is a verb?",
    "Explain what a computer is in one sentence.",
    "What is the internet?",
    "What does a thermometer measure?",
    "What is a volcano?",
    "What is an atom?",
    "What is democracy?",
    "What is a rainbow?",
    "Explain what gravity does, in simple words.",
    "What is recycling and why is it useful?",
    "What is a library?",
    "What does a doctor do?",
    "What does a firefighter do?",
    "What is a vaccine?",
    "Why do we need sleep?",
    "Why is exercise good for you?",
    "What is a password?",
    "What is a recipe?",
    "What is the difference between weather and climate?",
    "What is a mammal?",
    "What is photosynthesis, in one sentence?",
    "What causes the seasons on Earth?",
    "Why do leaves change colour in autumn?",
    "What is machine learning?",
    "What is a programming language?",
    "What is electricity?",
    "What is a museum?",
    "What is an email?",
    "Why is the ocean salty?",
    # advice and how-to
    "Give me three tips for studying better.",
    "How can I save money on groceries?",
    "How do I make a cup of tea?",
    "What should I pack for a day at the beach?",
    "How can I fall asleep faster?",
    "Give me two ideas for a rainy afternoon.",
    "How do I boil an egg?",
    "What are some ways to stay healthy?",
    "How can I be more productive at work?",
    "How do I write a good email to my teacher?",
    "What should I do if I feel stressed?",
    "How can I learn a new language?",
    "Suggest a healthy breakfast.",
    "How do I care for a houseplant?",
    "What are good habits for saving energy at home?",
    "How can I improve my handwriting?",
    "Give me a tip for public speaking.",
    "How do I start running as a beginner?",
    "How can I keep my room tidy?",
    "What should I bring to a job interview?",
    # writing and creativity
    "Write a short poem about the moon.",
    "Write one sentence about a happy dog.",
    "Write a haiku about autumn.",
    "Tell me a short story about a brave mouse.",
    "Write a thank-you note to a friend who helped me move.",
    "Describe a sunset in two sentences.",
    "Write a short birthday message for my sister.",
    "Give me a name for a friendly robot.",
    "Write a slogan for a lemonade stand.",
    "Describe the taste of chocolate.",
    "Write a two-line rhyme about cats.",
    "Invent a name for a new ice cream flavour.",
    "Write a short motivational quote.",
    "Describe a busy city street.",
    "Write a sentence using the word 'gigantic'.",
    # language tasks
    "Translate 'thank you' into Spanish.",
    "Translate 'good night' into French.",
    "What is a synonym for 'happy'?",
    "What is an antonym of 'big'?",
    "Correct this sentence: 'She go to school every day.'",
    "Make this sentence more polite: 'Give me the book.'",
    "Summarize in one sentence: The park was full of children playing, parents chatting and dogs running after balls.",
    "Is 'quickly' an adjective or an adverb?",
    "What is the past tense of 'run'?",
    "Spell the word 'necessary' backwards.",
    "Put these words in alphabetical order: pear, apple, mango.",
    "Turn this into a question: 'You like pizza.'",
    "Give an example of a compound word.",
    "What does the idiom 'break the ice' mean?",
    "What is a palindrome? Give an example.",
    # everyday reasoning and opinions
    "Is it better to study in the morning or at night?",
    "Why do people keep pets?",
    "What are the benefits of reading books?",
    "Why is it important to drink water?",
    "What makes a good friend?",
    "Why do we have traffic lights?",
    "What is the purpose of a seat belt?",
    "Why should we protect forests?",
    "What are the advantages of public transport?",
    "Why do birds fly south for the winter?",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
    "If today is Monday, what day is tomorrow?",
    "What comes next in the sequence 2, 4, 6, 8?",
    "Name three fruits.",
    "Name three colours of the rainbow.",
    "List three farm animals.",
    "Name two musical instruments.",
    "What are the three states of matter?",
    "Name a vegetable that is orange.",
    "Name three things you can find in a kitchen.",
    # small talk
    "Hello! How are you today?",
    "Can you tell me a fun fact?",
    "Tell me a joke.",
    "What can you help me with?",
    "What is your name?",
    "Good morning! Any plans for today?",
    "Recommend a book for a teenager.",
    "What is a good hobby to start?",
    "What is your favourite colour?",
    "Say something nice to cheer me up.",
]


def build_replay(out_dir, max_new_tokens=128):
    """``general_replay.jsonl``: each general prompt with the real model's own greedy answer.

    Mixing a little of this into task training is *replay by self-distillation*: the targets are what
    the base model already says (default system prompt), so the mix teaches nothing new, it only
    anchors the model's general behaviour while the task data pulls it elsewhere. Answers that did not
    finish within ``max_new_tokens`` are dropped (training on them would teach the model to stop
    mid-sentence) and listed.
    """
    sys.path.insert(0, str(DATA_DIR.parent))
    from ftlab import load_model

    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    replies = generate_greedy(model, tok, [[{"role": "user", "content": q}] for q in REPLAY_PROMPTS],
                              max_new_tokens=max_new_tokens, desc="replay")
    kept = []
    for prompt, reply in zip(REPLAY_PROMPTS, replies):
        n_tokens = len(tok(reply, add_special_tokens=False)["input_ids"])
        if n_tokens >= max_new_tokens - 1 or not reply:
            print(f"  dropped (did not finish in {max_new_tokens} tokens): {prompt!r}")
            continue
        kept.append({"instruction": prompt, "input": "", "output": reply, "task": "general",
                     "template": "replay"})
    write_jsonl(Path(out_dir) / "general_replay.jsonl", kept)
    print(f"general replay: kept {len(kept)} of {len(REPLAY_PROMPTS)}")


# --------------------------------------------------------------------------- writing, stats, base score

def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_all(out_dir, seed=SEED, scale=1.0, sizes=None, chat_sizes=None):
    out_dir = Path(out_dir)
    sizes = sizes or {k: round(v * scale) for k, v in SIZES.items()}
    chat_sizes = chat_sizes or {k: round(v * scale) for k, v in CHAT_SIZES.items()}
    # One generator per file, each seeded from the master seed: changing one dataset's size
    # leaves the others' bytes unchanged.
    instr = build_instructions(random.Random(f"{seed}-instructions"), sizes)
    for split, rows in instr.items():
        write_jsonl(out_dir / "instructions" / f"{split}.jsonl", rows)
    conv = build_chat(random.Random(f"{seed}-chat"), chat_sizes)
    for split, rows in conv.items():
        write_jsonl(out_dir / "chat" / f"{split}.jsonl", rows)
    write_jsonl(out_dir / "domain_corpus.jsonl", build_corpus(random.Random(f"{seed}-corpus"), round(CORPUS_DOCS * scale)))
    write_jsonl(out_dir / "preferences.jsonl", build_preferences(random.Random(f"{seed}-prefs"), round(PREFERENCE_PAIRS * scale)))
    return {"instructions": {k: len(v) for k, v in instr.items()}, "chat": {k: len(v) for k, v in conv.items()}}


def print_stats(out_dir):
    """Token-length statistics (through SmolLM2's chat template, default system prompt included)."""
    sys.path.insert(0, str(DATA_DIR.parent))
    from ftlab import load_tokenizer

    tok = load_tokenizer()

    def n_tokens(messages):
        return len(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    def describe(name, lengths):
        lengths = sorted(lengths)
        q = lambda p: lengths[min(len(lengths) - 1, int(p * len(lengths)))]
        print(f"| {name} | {len(lengths)} | {min(lengths)} | {q(0.5)} | {sum(lengths) / len(lengths):.0f} | "
              f"{q(0.95)} | {max(lengths)} |")

    print("| file | records | min | median | mean | p95 | max |")
    print("|---|---|---|---|---|---|---|")
    for split in ("train", "validation", "test"):
        rows = [json.loads(line) for line in open(out_dir / "instructions" / f"{split}.jsonl", encoding="utf-8")]
        describe(f"instructions/{split}", [n_tokens([{"role": "user", "content": f"{r['instruction']}\n\n{r['input']}"},
                                                     {"role": "assistant", "content": r["output"]}]) for r in rows])
    for split in ("train", "validation", "test"):
        rows = [json.loads(line) for line in open(out_dir / "chat" / f"{split}.jsonl", encoding="utf-8")]
        describe(f"chat/{split}", [n_tokens(r["messages"]) for r in rows])
    rows = [json.loads(line) for line in open(out_dir / "domain_corpus.jsonl", encoding="utf-8")]
    describe("domain_corpus", [len(tok(r["text"])["input_ids"]) for r in rows])
    rows = [json.loads(line) for line in open(out_dir / "preferences.jsonl", encoding="utf-8")]
    describe("preferences (prompt+chosen)", [n_tokens([{"role": "user", "content": r["prompt"]},
                                                       {"role": "assistant", "content": r["chosen"]}]) for r in rows])


def score_base(out_dir, per_task, batch_size=16, log_path=None, threads=None):
    """Greedy answers of the base SmolLM2-135M-Instruct on the first ``per_task`` test examples of each task.

    Tasks are interleaved and every batch's predictions are appended to ``log_path`` as JSONL, so a
    run stopped early still leaves a usable (smaller) sample.
    """
    sys.path.insert(0, str(DATA_DIR.parent))
    import time

    from ftlab import load_model
    from ftlab.data import score_example

    rows = [json.loads(line) for line in open(Path(out_dir) / "instructions" / "test.jsonl", encoding="utf-8")]
    by_task = [[r for r in rows if r["task"] == task][:per_task] for task in TASKS]
    chosen = [group[i] for i in range(per_task) for group in by_task if i < len(group)]
    import torch

    if threads:
        torch.set_num_threads(threads)  # on a crowded CPU, one thread wastes less time waiting
    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    t0 = time.time()
    preds = []
    for start in range(0, len(chosen), batch_size):
        batch = chosen[start:start + batch_size]
        preds += generate_greedy(model, tok, [[{"role": "user", "content": f"{r['instruction']}\n\n{r['input']}"}]
                                              for r in batch], max_new_tokens=48, batch_size=batch_size,
                                 desc=f"base model {start + len(batch)}/{len(chosen)}")
        if log_path:
            with open(log_path, "a", encoding="utf-8") as f:
                for r, p in zip(batch, preds[-len(batch):]):
                    f.write(json.dumps({"task": r["task"], "template": r["template"], "output": r["output"],
                                        "prediction": p, "score": score_example(r["task"], p, r["output"])}) + "\n")
    scores = {t: [] for t in TASKS}
    for r, pred in zip(chosen, preds):
        scores[r["task"]].append(score_example(r["task"], pred, r["output"]))
    print(f"base model on {len(chosen)} test examples, greedy, {time.time() - t0:.0f} s")
    for task in TASKS:
        print(f"  {task:13s} {sum(scores[task]) / len(scores[task]):.3f}  (n={len(scores[task])})")
    everything = [s for t in TASKS for s in scores[t]]
    print(f"  {'overall':13s} {sum(everything) / len(everything):.3f}  (n={len(everything)})")
    for task in TASKS:
        for r, pred in [(r, p) for r, p in zip(chosen, preds) if r["task"] == task][:3]:
            print(f"  [{task}] expected {r['output']!r}\n      got {pred[:160]!r}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DATA_DIR, help="output folder (default: this data/ folder)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--scale", type=float, default=1.0, help="multiply every dataset size")
    p.add_argument("--train", type=int, help="instruction train size (overrides --scale)")
    p.add_argument("--validation", type=int, help="instruction validation size")
    p.add_argument("--test", type=int, help="instruction test size")
    p.add_argument("--stats", action="store_true", help="print token-length statistics (loads the tokenizer)")
    p.add_argument("--verify-probes", action="store_true", help="rewrite probes.jsonl by asking the real model")
    p.add_argument("--build-replay", action="store_true",
                   help="rewrite general_replay.jsonl with the real model's own answers (a few minutes)")
    p.add_argument("--score-base", type=int, metavar="N", help="score the base model on N test examples per task")
    p.add_argument("--batch-size", type=int, default=16, help="generation batch size for --score-base")
    p.add_argument("--threads", type=int, help="torch CPU threads for --score-base (default: torch's choice)")
    p.add_argument("--score-log", type=Path, help="append the base model's predictions here (JSONL)")
    args = p.parse_args(argv)
    sizes = {k: round(v * args.scale) for k, v in SIZES.items()}
    for k in sizes:
        if getattr(args, k) is not None:
            sizes[k] = getattr(args, k)
    if args.verify_probes:
        verify_probes(args.out)
    if args.build_replay:
        build_replay(args.out)
    if args.stats or args.score_base:
        if args.stats:
            print_stats(args.out)
        if args.score_base:
            score_base(args.out, args.score_base, batch_size=args.batch_size, log_path=args.score_log, threads=args.threads)
        return
    if args.verify_probes or args.build_replay:
        return
    counts = build_all(args.out, seed=args.seed, scale=args.scale, sizes=sizes)
    print(f"wrote {args.out}: {counts}")


if __name__ == "__main__":
    main()
